"""Mix stage at the paper's scale: synthetic manifests → the pretrain mixture's wall time and peak RSS.

The run directory gets 30.4M image rows in shard row tables (two sources, 5 % exact duplicates across
them) with a recaption for each, and 6.4M canonical text rows over ten sources; then the mixture
(`recap_or_alt` captions, min side, flags, sha256 dedup, ten weighted text sources) is built in a
child process whose peak RSS is measured.

    .venv/bin/python benchmarks/mix.py [--scale 0.1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IMAGES, TEXT = 30_400_000, 6_400_000
ROWS_PER_FILE = 200_000
TEXT_SOURCES = ["infinity_instruct", "smoltalk", "openorca", "mathinstruct", "orca_math", "magpie_pro",
                "wizardcoder", "opencodeinterpreter", "mathqa", "dolly"]


def generate(root: Path, scale: float) -> dict:
    n_images, n_text = int(IMAGES * scale), int(TEXT * scale)
    con = duckdb.connect()
    con.execute("SET threads=2; SET memory_limit='2GB'; SET preserve_insertion_order=false")
    for source, (lo, hi) in (("datacomp", (0, int(n_images * 0.95))), ("gldv2", (int(n_images * 0.95), n_images))):
        (root / "shards" / source).mkdir(parents=True)
        (root / "captions" / source).mkdir(parents=True)
        for shard, start in enumerate(range(lo, hi, ROWS_PER_FILE)):
            end = min(hi, start + ROWS_PER_FILE)
            # sha256: gldv2 repeats 5 % of datacomp's hashes (cross-source duplicates)
            con.execute(f"""COPY (SELECT lpad(i::VARCHAR, 10, '0') AS key, i::VARCHAR AS row_id,
                    'https://x/' || i AS url, 'alt text ' || i AS caption, 'success' AS status,
                    NULL::VARCHAR AS error_message, 300 + i % 400 AS width, 300 + i % 300 AS height,
                    300 AS original_width, 300 AS original_height,
                    md5(CASE WHEN i >= {int(n_images * 0.95)} THEN (i - {int(n_images * 0.95)}) * 3 ELSE i END
                        ::VARCHAR) AS sha256
                FROM range({start}, {end}) t(i)) TO '{root}/shards/{source}/{shard:05d}.parquet'""")
            con.execute(f"""COPY (SELECT '{source}/' || lpad(i::VARCHAR, 10, '0') AS sample_id,
                    lpad(i::VARCHAR, 10, '0') AS key,
                    'A photo of thing ' || i || ' with a detailed description of what it shows.' AS caption,
                    'p' AS prompt, 'qwen2-vl-72b' AS model, 'vllm' AS engine, 20 AS n_tokens, 0.1::REAL AS seconds,
                    'stop' AS finish_reason,
                    CASE WHEN i % 50 = 0 THEN ['truncated'] ELSE []::VARCHAR[] END AS flags, NULL::VARCHAR AS error
                FROM range({start}, {end}) t(i)) TO '{root}/captions/{source}/{shard:05d}.parquet'""")
    per = n_text // len(TEXT_SOURCES)
    for name in TEXT_SOURCES:
        (root / "text" / name).mkdir(parents=True)
        con.execute(f"""COPY (SELECT '{name}/' || i AS sample_id, '{name}' AS source, i AS idx, NULL::VARCHAR AS image,
                [struct_pack(role := 'user', content := 'Question number ' || i || '?'),
                 struct_pack(role := 'assistant', content := 'Answer number ' || i || ', explained.')] AS messages,
                list_sum(list_transform(messages, lambda m: length(m.content)))::INTEGER AS chars
            FROM range({per}) t(i)) TO '{root}/text/{name}/part-00000.parquet'""")
    con.close()
    return {"images": n_images, "text": per * len(TEXT_SOURCES)}


def catalog(root: Path) -> dict:
    weights = [0.06, 0.03, 0.03, 0.02, 0.02, 0.02, 0.01, 0.01, 0.01, 0.005]
    return {
        "name": "bench", "workdir": str(root),
        "sources": {"datacomp": {"kind": "url_list", "path": "unused.parquet"},
                    "gldv2": {"kind": "url_list", "path": "unused.parquet"}},
        "text_sources": {n: {"format": "messages", "path": "unused.jsonl"} for n in TEXT_SOURCES},
        "mix": {"pretrain": {"captions": {"policy": "recap_or_alt", "min_side": 320},
                             "text": {n: {"weight": w} for n, w in zip(TEXT_SOURCES, weights, strict=True)}},
                "finetune": {"captions": None}, "memory_limit": "1536MB", "threads": 2},
    }


def child(root: str) -> None:
    """Build the mixture and print its stats, wall time and this process's peak RSS."""
    from vora_core.catalog import parse_catalog
    from vora_core.data.mixture import build_mixture

    c = parse_catalog(catalog(Path(root)))
    t0 = time.perf_counter()
    stats = build_mixture(c, "pretrain", c.run.mixture("pretrain"))
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"wall_s": round(wall, 2), "peak_rss_mib": round(rss), **stats}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the paper's 30.4M + 6.4M rows")
    ap.add_argument("--keep", type=Path, help="generate into (or reuse) this directory and keep it")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="vora-mix-bench-"))
    try:
        if not (tmp / "shards").exists():
            t0 = time.perf_counter()
            sizes = generate(tmp, args.scale)
            print(f"generated {sizes['images']:,} image rows + captions and {sizes['text']:,} text rows "
                  f"in {time.perf_counter() - t0:.0f} s")
        shutil.rmtree(tmp / "mixture", ignore_errors=True)
        out = subprocess.run([sys.executable, __file__, "--child", str(tmp)], capture_output=True, text=True,
                             check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"mixture: {result['rows']:,} rows in {result['parts']} parts, wall {result['wall_s']} s, "
              f"peak RSS {result['peak_rss_mib']} MiB (targets at scale 1: <= 20 s, <= 2048 MiB)")
        print(json.dumps(result["by_source"]))
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
