"""Recaption engines' throughput, in one run.

    .venv/bin/python benchmarks/recaption.py [--images 64] [--max-new-tokens 16] [--batch-sizes 1,8,32]
        [--repeats 2] [--threads 1,2] [--device cpu] [--dtype auto] [--requests 2000] [--concurrency 16,64]
        [--vllm-model NAME] [--skip hf,openai,vllm]

(a) `hf` engine on the tiny captioner (this CPU): images/s and generated tokens/s per torch thread
    count and batch size, and the ratio to the first (1 thread, batch 1) (the random captioner almost never
    stops early: tokens/image is printed).
(b) `openai` engine client overhead: requests/s against a local server (its own process) whose
    backend answers at once — the most the client can push through one process.
(c) `vllm` engine (only where vllm is importable, i.e. a GPU environment): images/s, tokens/s.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vora_core.caption.engines import CaptionRequest, HFEngine, OpenAIEngine  # noqa: E402
from vora_core.caption.models import build_tiny_captioner  # noqa: E402
from vora_core.catalog import RecaptionSettings, TinyCaptionerSettings  # noqa: E402


def images(n: int, side: int = 112) -> list[tuple[Image.Image, bytes]]:
    rng = random.Random(0)
    out = []
    for _ in range(n):
        img = Image.new("RGB", (side, side), tuple(rng.randrange(256) for _ in range(3)))
        x, y = rng.randrange(side // 2), rng.randrange(side // 2)
        ImageDraw.Draw(img).ellipse([x, y, x + side // 3, y + side // 3],
                                    fill=tuple(rng.randrange(256) for _ in range(3)))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append((img, buf.getvalue()))
    return out


def requests(pictures, prompts: list[str]) -> list[CaptionRequest]:
    return [CaptionRequest(f"bench/{i}", img, data, "jpg", prompts[i % len(prompts)])
            for i, (img, data) in enumerate(pictures)]


def bench_hf(args, model_dir: Path, reqs: list[CaptionRequest]) -> None:
    print(f"\n(a) hf engine, tiny captioner on {args.device} ({args.dtype}), {len(reqs)} images of 112x112 px "
          f"(16 image tokens), max_new_tokens={args.max_new_tokens}, best of {args.repeats}")
    base = None
    for threads in args.threads:
        for bs in args.batch_sizes:
            settings = RecaptionSettings(model=str(model_dir), batch_size=bs, max_new_tokens=args.max_new_tokens,
                                         max_pixels=112 * 112, cpu_threads=threads, device=args.device,
                                         dtype=args.dtype)
            engine = HFEngine(settings, str(model_dir))
            engine.caption(reqs[:bs])  # warm-up
            best = None
            for _ in range(args.repeats):  # best of N: the machine is shared
                started = time.perf_counter()
                tokens = 0
                for i in range(0, len(reqs), bs):
                    tokens += sum(r.n_tokens for r in engine.caption(reqs[i:i + bs]))
                seconds = time.perf_counter() - started
                best = min(best or (seconds, tokens), (seconds, tokens))
            seconds, tokens = best
            ips, tps = len(reqs) / seconds, tokens / seconds
            base = base or ips
            print(f"  threads {threads} batch {bs:>3}: {ips:7.2f} images/s  {tps:8.1f} tokens/s  "
                  f"{tokens / len(reqs):5.1f} tokens/image  ({ips / base:.2f}x threads {args.threads[0]} "
                  f"batch {args.batch_sizes[0]})")


def bench_openai(args, reqs: list[CaptionRequest]) -> None:
    server = subprocess.Popen([sys.executable, "-m", "vora_core.caption.server", "--echo"], stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        url = server.stdout.readline().strip()
        many = (reqs * (args.requests // len(reqs) + 1))[:args.requests]
        many = [CaptionRequest(f"bench/{i}", r.image, r.data, r.ext, r.prompt) for i, r in enumerate(many)]
        print(f"\n(b) openai engine client against a local echo server ({url}, its own process), "
              f"{len(many)} requests, {len(many[0].data)} B images")
        for concurrency in args.concurrency:
            settings = RecaptionSettings(engine="openai", model="echo", openai={
                "base_urls": [url], "concurrency": concurrency, "max_retries": 0})
            engine = OpenAIEngine(settings, "echo")
            engine.caption(many[:concurrency])  # warm-up
            started, cpu = time.perf_counter(), time.process_time()
            out = engine.caption(many)
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            assert len(out) == len(many) and all(r.text == "A caption." for r in out)
            print(f"  concurrency {concurrency:>3}: {len(many) / seconds:8.1f} requests/s, client CPU "
                  f"{1000 * cpu / len(many):.2f} ms per request (payload, base64, JSON, HTTP)")
    finally:
        server.terminate()
        server.wait()


def bench_vllm(args, reqs: list[CaptionRequest]) -> None:
    if importlib.util.find_spec("vllm") is None:
        print("\n(c) vllm engine: vllm is not importable in this environment (it lives in its own GPU "
              "environment: README, \"Recaption with vLLM\") — skipped")
        return
    from vora_core.caption.engines import VllmEngine

    settings = RecaptionSettings(engine="vllm", model=args.vllm_model, max_new_tokens=args.max_new_tokens,
                                 vllm={"max_model_len": 4096})
    engine = VllmEngine(settings, args.vllm_model)
    engine.caption(reqs[:8])
    started = time.perf_counter()
    out = engine.caption(reqs)
    seconds = time.perf_counter() - started
    tokens = sum(r.n_tokens for r in out)
    print(f"\n(c) vllm engine, {args.vllm_model}: {len(reqs) / seconds:.2f} images/s, {tokens / seconds:.1f} tokens/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="hf engine: cpu | cuda")
    parser.add_argument("--dtype", default="auto", help="hf engine: auto | float32 | bfloat16")
    parser.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[16, 64])
    parser.add_argument("--vllm-model", default="Qwen/Qwen2-VL-2B-Instruct")
    parser.add_argument("--skip", default="", help="comma list of hf,openai,vllm to skip")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    pictures = images(args.images)
    prompts = RecaptionSettings().prompts
    reqs = requests(pictures, prompts)
    with tempfile.TemporaryDirectory() as tmp:
        if "hf" not in skip:
            model_dir = build_tiny_captioner(Path(tmp) / "captioner", TinyCaptionerSettings())
            bench_hf(args, model_dir, reqs)
        if "openai" not in skip:
            bench_openai(args, reqs)
        if "vllm" not in skip:
            bench_vllm(args, reqs)


if __name__ == "__main__":
    main()
