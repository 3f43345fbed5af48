"""Training data path vs training step, through the real stage code (called by train_step.py --loader).

On one generated world (images in a shard, a mixed-length mixture of captions, VQA and text, tiny
LLM + teacher): (1) the data loader alone — decode through the tar index, transform, tokenise, pack —
in samples/s; (2) real `torchrun` runs of the same steps with packing and with padding: tokens/s,
samples/s and padding fraction from their metrics.jsonl. The loader must outrun the step's consumption.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "train"))  # the generated training world the tests use


def run(steps: int = 12, seq_len: int = 512, micro_batch: int = 4, n_text: int = 160, n_images: int = 64) -> None:
    from train_world import make_world, vora_config

    from vora_core.catalog import PretrainSettings
    from vora_core.train.launch import launch
    from vora_core.train.loader import EpochPlans, PackDataset, build_loader
    from vora_core.train.metrics import read_metrics
    from vora_core.train.prepare import load_tokenizer, prepare_spec, summarise
    from vora_core.train.samples import SampleBuilder, open_index

    with tempfile.TemporaryDirectory(prefix="vora-train-bench-") as tmp:
        world = make_world(Path(tmp), n_images=n_images, n_text=n_text, image_size=64, patch_size=8, hidden=64)
        config, fields = vora_config(world, "square", image_size=64, patch_size=8)
        model = {"init": "parts", "llm": str(world.llm), "teacher": str(world.teacher), "fields": fields}
        results = {}
        for packing in (True, False):
            s = PretrainSettings(seq_len=seq_len, steps=steps, micro_batch=micro_batch, packing=packing, lr=1e-3,
                                 warmup_steps=1, checkpoint_every=10_000, num_workers=1, cpu_threads=2)
            out = Path(tmp) / ("packed" if packing else "padded")
            spec, _ = prepare_spec("pretrain", out, world.mixture, world.run, model, str(world.llm), s, "square")
            if packing:  # the loader alone, on the packed plan, as a worker would run it
                tokenizer = load_tokenizer(str(world.llm))
                builder = SampleBuilder(tokenizer, config, "square", seq_len)
                lengths = open_index(spec.index).column("length").to_numpy()
                plans = EpochPlans(lengths, seq_len, True, 0, 0, 1, rows_per_step=micro_batch)
                loader = build_loader(PackDataset(spec.index, builder), plans, (0, 0), micro_batch, 0,
                                      pad_id=tokenizer.pad_token_id or 0)
                t0, samples, batches = time.perf_counter(), 0, 0
                for batch in loader:
                    samples += batch["counts"]["samples"]
                    batches += 1
                    if batches >= 3 * steps:
                        break
                results["loader"] = samples / (time.perf_counter() - t0)
            launch(spec, run_id=f"bench-{out.name}")
            results[out.name] = summarise(spec.metrics)
            rows = read_metrics(spec.metrics)[steps // 2:]  # steady state, as summarise
            results[out.name]["data_wait"] = sum(r["data_wait_s"] for r in rows) / sum(r["step_s"] for r in rows)
        packed, padded = results["packed"], results["padded"]
        print(f"world: {n_images} images, {world.n_samples} samples (captions, VQA, text of 3–40 words); "
              f"tiny LLM 64x2, rows of {seq_len} tokens, micro-batch {micro_batch}, {steps} steps, 1 CPU rank")
        print(f"packing: {packed['tokens_per_s']:.0f} tokens/s, {packed['samples_per_s']:.1f} samples/s, "
              f"padding {100 * packed['padding_fraction']:.1f} %")
        print(f"padding: {padded['tokens_per_s']:.0f} tokens/s, {padded['samples_per_s']:.1f} samples/s, "
              f"padding {100 * padded['padding_fraction']:.1f} %")
        print(f"packing vs padding: {packed['samples_per_s'] / padded['samples_per_s']:.2f}x samples/s")
        print(f"loader alone (1 process: decode + transform + tokenise + pack): {results['loader']:.0f} samples/s "
              f"= {results['loader'] / packed['samples_per_s']:.1f}x what the packed step consumes")
        print(f"time the packed step waited for its batch (loader in 1 worker process): "
              f"{100 * packed['data_wait']:.2f} % of the step")
