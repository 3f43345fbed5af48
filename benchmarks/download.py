"""Download stage vs raw img2dataset on the same url list, in one run.

    .venv/bin/python benchmarks/download.py [--n 5000] [--processes 2] [--threads 16]

Generates N images (64–256 px JPEGs), serves them as file:// and from a 127.0.0.1 http.server,
then times (a) raw `img2dataset.download` (its own decode/resize/encode) and (b) the download stage
end to end (prepare + units: img2dataset fetch + safe decode/resize/encode + shards + tar index),
and prints images/s and the stage/raw time ratio for each transport.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vora_core.catalog import load_catalog  # noqa: E402
from vora_core.stages import download  # noqa: E402
from vora_core.workdir import run_unit_with_marker  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_images(folder: Path, n: int) -> list[Path]:
    rng = random.Random(0)
    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        w, h = rng.randint(64, 256), rng.randint(64, 256)
        img = Image.new("RGB", (w, h), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        img.paste((rng.randrange(256), 0, 0), (w // 4, h // 4, w // 2, h // 2))
        path = folder / f"{i:06d}.jpg"
        img.save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def raw_img2dataset(url_list: Path, out: Path, args) -> float:
    kwargs = {
        "url_list": str(url_list), "input_format": "parquet", "url_col": "url", "caption_col": "caption",
        "output_format": "webdataset", "output_folder": str(out), "image_size": args.image_size,
        "resize_mode": "keep_ratio_largest", "resize_only_if_bigger": True, "encode_format": "jpg",
        "processes_count": args.processes, "thread_count": args.threads, "number_sample_per_shard": 1000,
        "timeout": 10, "retries": 2, "enable_wandb": False,
    }
    spec = out.with_suffix(".json")
    spec.write_text(json.dumps(kwargs))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vora_core.data.img2dataset_child", str(spec)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def stage(url_list: Path, work: Path, args) -> tuple[float, int]:
    work.mkdir(parents=True, exist_ok=True)
    catalog_path = work / "catalog.yaml"
    catalog_path.write_text(yaml.safe_dump({
        "name": "bench", "workdir": str(work / "run"),
        "sources": {"bench": {"kind": "url_list", "path": str(url_list)}},
        "download": {"image_size": args.image_size, "processes_count": args.processes,
                     "thread_count": args.threads, "number_sample_per_shard": 1000,
                     "rows_per_unit": max(1000, (args.n + 999) // 1000 * 1000)},
    }))
    catalog = load_catalog(catalog_path)
    start = time.perf_counter()
    for unit in download.prepare_units(catalog):
        run_unit_with_marker(unit, lambda u: download.run_unit(catalog, u))
    ok = 0
    for unit in download.plan(catalog):
        ok += run_unit_with_marker(unit, lambda u: download.run_unit(catalog, u))["successes"]
    return time.perf_counter() - start, ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    root = Path(tempfile.mkdtemp(prefix="vora-bench-download-"))
    try:
        paths = make_images(root / "images", args.n)
        # The server runs in its own process so it never competes with the stage for this one's GIL.
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                   "--directory", str(root / "images")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        time.sleep(1.0)
        print(f"{args.n} images, {args.processes} processes x {args.threads} threads, image_size {args.image_size}")
        print(f"{'transport':<10}{'raw img2dataset':>18}{'download stage':>18}{'stage/raw':>12}")
        for transport in ("file", "http"):
            urls = [p.as_uri() if transport == "file" else f"{base}/{p.name}" for p in paths]
            url_list = root / f"{transport}.parquet"
            pq.write_table(pa.table({"url": urls, "caption": [p.stem for p in paths]}), url_list)
            # Best of `repeat` alternating runs: the machine is shared and noisy.
            raw_s = stage_s = float("inf")
            for r in range(args.repeat):
                raw_s = min(raw_s, raw_img2dataset(url_list, root / f"raw-{transport}-{r}", args))
                seconds, ok = stage(url_list, root / f"stage-{transport}-{r}", args)
                stage_s = min(stage_s, seconds)
            assert ok == args.n, f"stage stored {ok} of {args.n}"
            print(f"{transport:<10}{args.n / raw_s:>13.0f} im/s{args.n / stage_s:>13.0f} im/s{stage_s / raw_s:>12.2f}")
        server.terminate()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
