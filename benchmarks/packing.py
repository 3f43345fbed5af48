"""Packing that pays: fill rate and step time per sample at several `seq_len`, for the demo's and the
paper's length distributions.

For each distribution the project's packer (`vora_core.train.packing.plan_epoch`, first-fit over a
window of open rows) packs one epoch at each `seq_len`; "fill" is tokens / (rows x seq_len) and "pad"
is the fill of `packing: false` (one sample per row, a micro-batch padded to its longest row). The time
is a real forward + backward of a VoRA-shaped LLM (the demo's: 128x4, vocab 1024, dense SDPA mask over
documents) on packed rows of that `seq_len` holding the same number of tokens per step at every
`seq_len` (rows per step = --tokens / seq_len), timed in interleaved rounds so every `seq_len` sees
the same machine load; the figure is ms per sample (lower is better).

Distributions: demo-pretrain / demo-finetune (the lengths in a run's samples.arrow, if --run is given;
demo-pretrain else has the demo's shape: 64 vision tokens + 41-59 text tokens), paper-256 / paper-1024
(captions of 30-300 tokens + 256 or 1,024 vision tokens, the paper's 448-px images).

    .venv/bin/python benchmarks/packing.py                    # the table (about 2 min on 2 quiet cores)
    .venv/bin/python benchmarks/packing.py --run runs/demo    # the demo's own lengths
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from transformers import Qwen2Config

from vora_core.model.config import VoRAConfig
from vora_core.model.modeling import VoRAForCausalLM
from vora_core.train.packing import plan_epoch

SEQ_LENS = {"demo": (128, 256, 512, 1024), "paper-256": (512, 1024, 2048, 4096),
            "paper-1024": (2048, 4096, 8192)}


def distributions(run: Path | None, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for stage in ("pretrain", "finetune"):
        index = run / stage / "samples.arrow" if run is not None else None
        if index is not None and index.exists():
            from vora_core.train.samples import open_index

            out[f"demo-{stage}"] = open_index(index).column("length").to_numpy()
    if "demo-pretrain" not in out:  # the demo's captions: 64 vision tokens + 41-59 text tokens
        out["demo-pretrain"] = 64 + rng.integers(41, 60, n)
    out["paper-256"] = 256 + rng.integers(30, 301, n)
    out["paper-1024"] = 1024 + rng.integers(30, 301, n)
    return out


def fill(lengths: np.ndarray, seq_len: int, packing: bool, micro_batch: int = 1) -> float:
    packs = plan_epoch(lengths, seq_len, packing, seed=0, epoch=0)
    rows = [int(sum(lengths[i] for i in p)) for p in packs]
    if packing:
        return sum(rows) / (len(rows) * seq_len)
    slots = sum(max(rows[k:k + micro_batch]) * len(rows[k:k + micro_batch]) for k in range(0, len(rows), micro_batch))
    return sum(rows) / slots


def batch(lengths: np.ndarray, seq_len: int, rows: int, vocab: int, offset: int) -> tuple[dict, int]:
    """`rows` packed rows of the epoch plan (from pack `offset`), padded to seq_len; and their sample count."""
    packs = plan_epoch(lengths, seq_len, True, seed=0, epoch=0)
    chosen = [packs[(offset + k) % len(packs)] for k in range(rows)]
    docs = torch.full((rows, seq_len), -1, dtype=torch.long)
    for r, pack in enumerate(chosen):
        at = 0
        for d, i in enumerate(pack):
            docs[r, at:at + lengths[i]] = d
            at += int(lengths[i])
    ids = torch.randint(10, vocab, (rows, seq_len))
    labels = torch.where(docs >= 0, ids, -100)
    return {"input_ids": ids, "doc_ids": docs, "labels": labels}, sum(len(p) for p in chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="a run directory whose samples.arrow lengths to use")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per step (demo); x4 for the paper's")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2000, help="samples drawn per synthetic distribution")
    parser.add_argument("--no-time", action="store_true", help="fill rates only")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    text = Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 2,
                       num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2)
    model = VoRAForCausalLM(VoRAConfig(text_config=text, distill="none", lora_rank=0, attn_implementation="sdpa"))
    model.train()
    print(f"threads {torch.get_num_threads()}, LLM {args.hidden}x{args.layers} vocab {args.vocab}, fp32, "
          f"{args.rounds} interleaved rounds")
    print("| distribution | mean length | seq_len | fill (packed) | fill (padded, micro-batch 2) | rows/step | "
          "ms per sample |")
    print("|---|---|---|---|---|---|---|")
    for name, lengths in distributions(args.run, args.samples, rng).items():
        seq_lens = [s for s in SEQ_LENS["demo" if name.startswith("demo") else name] if s >= lengths.max()]
        tokens = args.tokens * (1 if name.startswith("demo") else 4)
        times: dict[int, list[float]] = {s: [] for s in seq_lens}
        if not args.no_time:
            for r in range(args.rounds + 1):  # round 0 warms up
                for s in seq_lens:
                    b, n = batch(lengths, s, max(1, tokens // s), args.vocab, offset=r * 8)
                    start = time.perf_counter()
                    model(**b).loss.backward()
                    elapsed = time.perf_counter() - start
                    model.zero_grad(set_to_none=True)
                    if r:
                        times[s].append(1e3 * elapsed / n)
        for s in seq_lens:
            per = f"{statistics.median(times[s]):.1f}" if times[s] else "-"
            print(f"| {name} | {lengths.mean():.0f} | {s} | {fill(lengths, s, True):.3f} | "
                  f"{fill(lengths, s, False, 2):.3f} | {max(1, tokens // s)} | {per} |", flush=True)


if __name__ == "__main__":
    main()
