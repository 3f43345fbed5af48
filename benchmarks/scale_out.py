"""The Ray runner vs the local runner: per-unit overhead, and the download stage on a 2-node Ray cluster.

    .venv/bin/python benchmarks/scale_out.py [--units 50] [--n 5000] [--cpus-per-node 2]

(1) ~50 units that only write a small file, through the real unit task (markers, Prefect task runs):
    wall ms per unit for the local runner (1 and 4 units at a time) and for Ray (every unit submitted).
(2) The download stage (prepare + units: img2dataset over http + shards) on N images served by a
    127.0.0.1 http.server: local runner (1 and 4 units at a time) vs a 2-node Ray cluster simulated on
    this host (`ray.cluster_utils.Cluster`), same catalog apart from `orchestration`; images/s and ratio.
Both "nodes" share this machine's cores: the figures measure the runner's overhead and concurrency,
not more hardware.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])  # Ray workers import us

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402

from benchmarks.download import free_port, make_images  # noqa: E402


def noop_unit(catalog, unit) -> dict:
    """The smallest unit: one small output file (the marker is written next to it)."""
    Path(unit.output).write_text(unit.id)
    return {"bytes": len(unit.id)}


def write_catalog(path: Path, workdir: Path, runner: str, address: str | None, **download) -> Path:
    path.write_text(yaml.safe_dump({
        "name": "scaleout", "workdir": str(workdir),
        "sources": {"bench": {"kind": "url_list", "path": str(workdir.parent / "urls.parquet")}},
        "download": {"image_size": 128, "number_sample_per_shard": 250, "unit_retries": 0, **download},
        "orchestration": {"runner": runner, "ray": {"address": address}},
    }))
    return path


def overhead(root: Path, runner: str, address: str | None, units: int, parallel: int) -> float:
    """Wall ms per unit of `units` no-op units through map_units."""
    from prefect import flow

    from flows.common import map_units
    from vora_core.catalog import load_catalog
    from vora_core.workdir import Unit

    work = root / f"overhead-{runner}-{parallel}"
    work.mkdir(parents=True)
    path = write_catalog(work / "catalog.yaml", work / "run", runner, address)
    catalog = load_catalog(path)
    todo = [Unit(stage="merge", id=f"noop-{i:03d}", output=str(work / f"noop-{i:03d}.txt"), fingerprint="noop",
                 params={}) for i in range(units)]

    @flow(name="scale-out-overhead")
    def run() -> float:
        map_units(catalog, str(path), "merge", todo[:2], "benchmarks.scale_out:noop_unit", parallel=parallel)  # warm
        started = time.perf_counter()
        map_units(catalog, str(path), "merge", todo[2:], "benchmarks.scale_out:noop_unit", parallel=parallel)
        return 1000 * (time.perf_counter() - started) / (units - 2)

    return run()


def download_rate(root: Path, name: str, runner: str, address: str | None, n: int, **download) -> float:
    from flows.download import download_flow

    path = write_catalog(root / f"{name}.yaml", root / name, runner, address, **download)
    started = time.perf_counter()
    results = download_flow(str(path))
    seconds = time.perf_counter() - started
    ok = sum(r.get("successes", 0) for r in results)
    assert ok == n, f"{name}: {ok} of {n} images stored"
    return n / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--units", type=int, default=50)
    parser.add_argument("--n", type=int, default=5000, help="images of the download comparison")
    parser.add_argument("--cpus-per-node", type=int, default=2)
    parser.add_argument("--skip-download", action="store_true")
    args = parser.parse_args()

    import ray
    from prefect.testing.utilities import prefect_test_harness
    from ray.cluster_utils import Cluster

    root = Path(tempfile.mkdtemp(prefix="vora-bench-scale-out-"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": args.cpus_per_node, "include_dashboard": False})
    cluster.add_node(num_cpus=args.cpus_per_node)
    cluster.wait_for_nodes()
    server = None
    try:
        with prefect_test_harness(server_startup_timeout=300):
            print(f"(1) per-unit overhead, {args.units} no-op units; Ray: 2 nodes x {args.cpus_per_node} CPUs")
            for label, runner, address, parallel in (("local, 1 at a time", "local", None, 1),
                                                     ("local, 4 at a time", "local", None, 4),
                                                     ("ray, 2 nodes", "ray", cluster.address, 1)):
                print(f"  {label:<22}{overhead(root, runner, address, args.units, parallel):>8.0f} ms/unit", flush=True)
            if args.skip_download:
                return
            paths = make_images(root / "images", args.n)
            port = free_port()
            server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                       "--directory", str(root / "images")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            pq.write_table(pa.table({"url": [f"http://127.0.0.1:{port}/{p.name}" for p in paths],
                                     "caption": [p.stem for p in paths]}), root / "urls.parquet")
            per_unit = max(250, -(-args.n // 8) // 250 * 250)  # about 8 units
            common = {"processes_count": 1, "thread_count": 16, "rows_per_unit": per_unit}
            print(f"(2) download stage, {args.n} images over http, {-(-args.n // per_unit)} units, 1 process x "
                  "16 threads per unit")
            local1 = download_rate(root, "local-1", "local", None, args.n, **common)
            print(f"  {'local, 1 at a time':<22}{local1:>8.0f} images/s", flush=True)
            local4 = download_rate(root, "local-4", "local", None, args.n, parallel_units=4, **common)
            print(f"  {'local, 4 at a time':<22}{local4:>8.0f} images/s  ({local4 / local1:.2f}x)", flush=True)
            on_ray = download_rate(root, "ray", "ray", cluster.address, args.n, **common)
            print(f"  {'ray, 2 nodes':<22}{on_ray:>8.0f} images/s  ({on_ray / local1:.2f}x local 1, "
                  f"{on_ray / local4:.2f}x local 4)", flush=True)
    finally:
        if server:
            server.terminate()
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
