"""How OpenMP's wait policy changes a tiny model's training step on CPU (README "Training speed on CPU").

Times the demo's teacher step (a seeded tiny AIMv2, 64 wide, 2 blocks, 112 px at patch 14, four
classifier heads, batch 64, AdamW) in a fresh process per setting, since libgomp reads
`OMP_WAIT_POLICY` / `GOMP_SPINCOUNT` once, when torch loads it. Settings take turns, round by round,
so they share the machine's load; `--pair` runs two processes of one setting at once (trainers side
by side). Prints ms per batch for every setting and round.

    .venv/bin/python benchmarks/openmp_wait.py --spin 0 3000 30000 --rounds 2 [--pair]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

STEP = r"""
import os, sys, tempfile, time, torch
from vora_core.model.tiny import build_tiny_teacher
from transformers import Aimv2VisionModel
batches = int(sys.argv[1])
with tempfile.TemporaryDirectory() as tmp:
    path = build_tiny_teacher(tmp, image_size=112, patch_size=14, hidden_size=64, num_hidden_layers=2,
                              num_attention_heads=2, intermediate_size=128)
    model = Aimv2VisionModel.from_pretrained(path)
torch.manual_seed(0)
x = torch.randn(64 * max(batches, 3), 3, 112, 112)
y = torch.randint(0, 3, (64 * max(batches, 3), 4))
heads = torch.nn.ModuleList(torch.nn.Linear(64, 5) for _ in range(4))
opt = torch.optim.AdamW([*model.parameters(), *heads.parameters()], lr=1e-3)
model.train()
def step(i):
    b = slice(64 * i, 64 * (i + 1))
    pooled = model(pixel_values=x[b]).last_hidden_state.mean(1)
    loss = sum(torch.nn.functional.cross_entropy(h(pooled), y[b, k]) for k, h in enumerate(heads))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
for i in range(3):
    step(i)
start = time.perf_counter()
for i in range(batches):
    step(i)
print(f"{(time.perf_counter() - start) / batches * 1000:.1f}")
"""


def environment(spin: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(OMP_WAIT_POLICY="PASSIVE", GOMP_SPINCOUNT=str(spin), PYTHONPATH=os.getcwd())
    return env


def measure(spin: int, batches: int, processes: int) -> list[float]:
    """ms per batch of each of `processes` runs of the step started together under one setting."""
    runs = [subprocess.Popen([sys.executable, "-c", STEP, str(batches)], env=environment(spin),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(processes)]
    out = []
    for run in runs:
        stdout, stderr = run.communicate()
        if run.returncode != 0:
            raise SystemExit(f"openmp_wait: the step failed under GOMP_SPINCOUNT={spin}: {stderr[-1000:]}")
        out.append(float(stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spin", type=int, nargs="+", default=[0, 3000, 30000],
                        help="GOMP_SPINCOUNT values to compare (0 = sleep at once)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batches", type=int, default=40, help="timed batches per measurement")
    parser.add_argument("--pair", action="store_true", help="two processes of each setting at once")
    args = parser.parse_args()
    processes = 2 if args.pair else 1
    print(f"ms per batch of 64, the demo's teacher step; {processes} process(es) at once; "
          f"load {os.getloadavg()[0]:.2f} at {time.strftime('%H:%M')}")
    results: dict[int, list[float]] = {spin: [] for spin in args.spin}
    for r in range(args.rounds):
        for spin in args.spin:
            got = measure(spin, args.batches, processes)
            results[spin].extend(got)
            print(f"round {r + 1}  GOMP_SPINCOUNT={spin:<6}  " + "  ".join(f"{v:7.1f}" for v in got), flush=True)
    base = min(results[args.spin[0]])
    for spin, values in results.items():
        print(f"GOMP_SPINCOUNT={spin:<6}  best {min(values):7.1f}  vs {args.spin[0]}: {base / min(values):.2f}x")


if __name__ == "__main__":
    main()
