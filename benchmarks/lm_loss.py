"""Peak memory and time of the LM loss (forward + backward): plain vs chunked (vora_core.model.loss).

The loss of `--tokens` label positions through an LM head of `--vocab` × `--hidden` (trainable, as in
finetuning). Each variant runs in its own process so that peak memory is its own: on CUDA
`max_memory_allocated` above what the inputs hold, on CPU the growth of the peak resident set.

    .venv/bin/python benchmarks/lm_loss.py                                  # vocab 152,064, 8k tokens
    .venv/bin/python benchmarks/lm_loss.py --hidden 256 --chunks 0 4096     # quick on a CPU
    .venv/bin/python benchmarks/lm_loss.py --vocab 1024 --hidden 64 --tokens 2048 --reps 20   # demo size
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(args: argparse.Namespace, chunk: int) -> dict:
    """One variant in this process: mean seconds of forward + backward and peak extra memory."""
    from vora_core.model.loss import lm_loss_sum

    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    gen = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(args.tokens, args.hidden, generator=gen).to(device, dtype).requires_grad_()
    weight = (torch.randn(args.vocab, args.hidden, generator=gen) * 0.02).to(device, dtype).requires_grad_()
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=gen).to(device)

    def step() -> float:
        loss = lm_loss_sum(hidden, weight, None, targets, chunk) / args.tokens
        loss.backward()
        hidden.grad = weight.grad = None
        return float(loss)

    cuda = device.type == "cuda"
    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
    times = []
    for _ in range(args.reps):
        start = time.perf_counter()
        loss = step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"chunk": chunk, "seconds": sum(times) / len(times), "peak_extra_gib": max(0, peak - base) / 2**30,
            "loss": loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=152064)
    parser.add_argument("--hidden", type=int, default=3584)
    parser.add_argument("--tokens", type=int, default=8192, help="label positions")
    parser.add_argument("--chunks", type=int, nargs="+", default=[0, 4096, 1024], help="0 = plain")
    parser.add_argument("--dtype", default="bf16" if torch.cuda.is_available() else "fp32", choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child: measure one chunk size
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args, args.one)))
        return
    print(f"LM loss forward+backward: {args.tokens} label tokens, vocab {args.vocab}, hidden {args.hidden}, "
          f"{args.dtype} on {args.device}, threads {torch.get_num_threads()}, mean of {args.reps}")
    print("| variant | time (s) | peak extra memory (GiB) | loss |")
    print("|---|---|---|---|")
    for chunk in args.chunks:
        child = [sys.executable, __file__, *_without_chunks(sys.argv[1:]), "--one", str(chunk)]
        out = subprocess.run(child, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        name = "plain" if chunk <= 0 else f"chunked {chunk}"
        print(f"| {name} | {r['seconds']:.3f} | {r['peak_extra_gib']:.2f} | {r['loss']:.4f} |", flush=True)


def _without_chunks(argv: list[str]) -> list[str]:
    """The parent's arguments minus the `--chunks` values (the child gets `--one`)."""
    out, skipping = [], False
    for a in argv:
        if a.startswith("--chunks"):
            skipping = True
            continue
        if skipping and not a.startswith("--"):
            continue
        skipping = False
        out.append(a)
    return out


if __name__ == "__main__":
    main()
