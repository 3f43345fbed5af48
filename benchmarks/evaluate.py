"""Evaluation throughput: samples/s with batched greedy decoding vs one question at a time.

Builds the demo-sized tiny VoRA model (seeded, from configs) and a held-out synthetic shapes
benchmark, then answers the same questions with batch sizes 1, 8, 16 and 32 through the evaluate
stage's own `predict` (prompt encoding, image preprocessing, cached `generate`, decoding). Checks
that every batch size gives the same answers, and prints samples/s and the speed-up over batch 1.

    .venv/bin/python benchmarks/evaluate.py [--samples 96] [--max-new-tokens 8] [--repeats 2] [--threads N]

Tiny models are latency-bound: with 2 torch threads on a machine whose other core is busy, every
small op waits for the descheduled thread, which hurts batch 1 (8x more ops) far more than big
batches. The load average is printed; compare runs taken under the same load, or use --threads 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(root: Path, n_images: int):
    import pyarrow.parquet as pq
    import torch

    from vora_core.catalog import SyntheticShapesSource
    from vora_core.data.sources import write_synthetic_shapes
    from vora_core.model.tiny import build_tiny_llm, build_tiny_teacher, build_tiny_vora, train_tokenizer

    src = SyntheticShapesSource(kind="synthetic_shapes", n=50, heldout=n_images, min_side=48, max_side=160)
    train, held = write_synthetic_shapes(src, root / "sources" / "shapes")
    pq.write_table(held, root / "sources" / "shapes" / "heldout" / "labels.parquet")
    tokenizer = train_tokenizer([r["caption"] for r in train.to_pylist()] * 10, vocab_size=1024)
    llm = build_tiny_llm(root / "llm", tokenizer, tie_word_embeddings=False)  # hidden 64, 4 blocks
    teacher = build_tiny_teacher(root / "teacher", image_size=64, patch_size=8)
    torch.manual_seed(0)
    return build_tiny_vora(root / "vora", llm, teacher, lora_rank=16, image_size=64, patch_size=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=96, help="questions (2 per held-out image)")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--batch-sizes", default="1,8,16,32")
    parser.add_argument("--repeats", type=int, default=2, help="best of N timings per batch size")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)

    import torch
    from transformers.utils import logging as hf_logging

    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    from vora_core.eval import heldout, runner

    with tempfile.TemporaryDirectory(prefix="vora-bench-eval-") as tmp:
        root = Path(tmp)
        model_dir = build(root, (args.samples + 1) // 2)
        loaded = runner.load_model(model_dir, dtype="float32", device="cpu")
        samples = heldout.build_heldout("shapes", root / "sources" / "shapes", "mc").samples[: args.samples]
        runner.predict(loaded, samples[:8], 8, args.max_new_tokens)  # warm-up
        print(f"tiny VoRA (hidden 64, 4 blocks, 64 image tokens per image) on {torch.get_num_threads()} CPU "
              f"threads (load average {os.getloadavg()[0]:.1f}); {len(samples)} questions, "
              f"{args.max_new_tokens} new tokens each")
        reference = None
        base = None
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            best = float("inf")
            for _ in range(args.repeats):
                started = time.perf_counter()
                answers, errors = runner.predict(loaded, samples, bs, args.max_new_tokens)
                best = min(best, time.perf_counter() - started)
            assert not errors
            if reference is None:
                reference = answers
            same = answers == reference
            rate = len(samples) / best
            base = base or rate
            print(f"batch {bs:>3}: {rate:7.1f} samples/s  ({best:6.2f} s)  x{rate / base:4.1f} vs batch 1"
                  f"  answers identical to batch 1: {same}")


if __name__ == "__main__":
    main()
