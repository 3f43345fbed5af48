"""orchestration.runner: ray on Ray's own multi-node simulation (ray.cluster_utils.Cluster: 2 nodes on this
host): units land on both nodes, outputs equal a local-runner run, a node killed mid-stage loses nothing,
failures and impossible requests end in one clear line instead of a hang."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import psutil
import pytest
import yaml

from vora_core.errors import StageError
from vora_core.workdir import read_marker

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
DEMO_TEXT = REPO / "catalogs" / "demo_text"


@pytest.fixture(scope="module")
def ray_cluster(prefect_harness):
    """A head and a worker node, 2 CPUs each, shared by the module's tests (~10-30 s to start)."""
    import ray
    from ray.cluster_utils import Cluster

    from flows import runners

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    runners._ray_task_runners.clear()
    runners._storage_checked.clear()
    cluster.shutdown()


def catalog(tmp_path: Path, workdir: Path, runner: str, address: str | None = None, **sections) -> Path:
    """The smallest catalog with 4 units in download, recaption and mix (16 images, 4 per unit and shard;
    two text sources and two mixtures)."""
    doc = {
        "name": "raytest",
        "workdir": str(workdir),
        "sources": {"shapes": {"kind": "synthetic_shapes", "n": 16, "heldout": 0, "max_side": 64}},
        "download": {"image_size": 64, "processes_count": 1, "thread_count": 4, "number_sample_per_shard": 4,
                     "rows_per_unit": 4, "unit_retries": 0},
        "recaption": {"model": "tiny", "batch_size": 4, "max_new_tokens": 6, "max_pixels": 56 * 56,
                      "concurrency_limit": None, "cpu_threads": 1},
        "text_sources": {"orca": {"format": "prompt_response", "path": str(DEMO_TEXT / "orca.jsonl"),
                                  "system_col": "system_prompt"},
                         "chat": {"format": "messages", "path": str(DEMO_TEXT / "messages.jsonl")}},
        "mix": {"pretrain": {"captions": {"exclude_flags": []}, "text": {"orca": {"weight": 0.2}}},
                "finetune": {"captions": None, "text": {"chat": {"repeat": 1}}}},
        "orchestration": {"runner": runner, "ray": {"address": address}},
    }
    for key, value in sections.items():
        doc[key] = {**doc[key], **value} if isinstance(value, dict) else value
    path = tmp_path / f"{runner}-{workdir.name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run_stages(path: Path) -> dict[str, list[dict]]:
    from flows.download import download_flow
    from flows.mix import mix_flow
    from flows.recaption import recaption_flow

    return {"download": download_flow(str(path)), "recaption": recaption_flow(str(path)), "mix": mix_flow(str(path))}


def captions(root: Path) -> list[tuple]:
    con = duckdb.connect()
    try:
        return con.execute("SELECT sample_id, caption FROM read_parquet(?) ORDER BY sample_id",
                           [str(root / "captions" / "shapes" / "*.parquet")]).fetchall()
    finally:
        con.close()


def mixture_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "mixture").rglob("*.parquet"))}


def unit_nodes(root: Path, pattern: str) -> dict[str, str | None]:
    """Unit output → the node its marker's stats name."""
    return {str(p.relative_to(root)): (read_marker(p.with_name(p.name.removesuffix(".done.json"))) or {})
            .get("stats", {}).get("node") for p in sorted(root.glob(pattern))}


def test_three_stages_on_two_ray_nodes_equal_the_local_runner(ray_cluster, tmp_path):
    run = tmp_path / "run"
    local = run_stages(catalog(tmp_path, run, "local"))
    assert {k: len(v) for k, v in local.items()} == {"download": 4, "recaption": 4, "mix": 4}
    expected_captions, expected_mixtures = captions(run), mixture_bytes(run)
    assert len(expected_captions) == 16 and len(expected_mixtures) >= 2
    assert not any(unit_nodes(run, "shards/shapes/unit-*.json.done.json").values())  # local: no node recorded
    run.rename(tmp_path / "run-local")  # the Ray run writes to the same paths, so the files can be compared

    path = catalog(tmp_path, run, "ray", ray_cluster.address)
    results = run_stages(path)
    assert {k: sorted(r["status"] for r in v) for k, v in results.items()} == \
        {k: ["done"] * 4 for k in ("download", "recaption", "mix")}
    nodes = {n.node_id for n in ray_cluster.list_all_nodes()}
    for stage in ("download", "recaption"):
        ran_on = {r["node"] for r in results[stage]}
        assert ran_on == nodes, f"{stage} units ran on {ran_on}, the cluster has {nodes}"
    assert set(unit_nodes(run, "captions/shapes/*.parquet.done.json").values()) == nodes  # in the markers too
    assert captions(run) == expected_captions
    assert mixture_bytes(run) == expected_mixtures

    again = run_stages(path)
    assert {r["status"] for v in again.values() for r in v} == {"skipped"}


def test_a_request_no_node_can_satisfy_fails_fast(ray_cluster, tmp_path):
    from flows.download import download_flow

    path = catalog(tmp_path, tmp_path / "run", "ray", ray_cluster.address, download={"resources": {"num_gpus": 8}})
    started = time.monotonic()
    with pytest.raises(StageError) as e:
        download_flow(str(path))
    assert str(e.value) == (
        f"download.resources: a unit asks CPU=1, GPU=8 but no node of the Ray cluster (orchestration.ray.address="
        f"{ray_cluster.address}, 2 live node(s)) has that much (the most one node has: CPU=2, GPU=0); lower "
        "download.resources (or the setting its default follows), or add such a node")
    assert time.monotonic() - started < 60


def test_a_unit_failing_for_a_data_reason_is_retried_a_bounded_number_of_times(ray_cluster, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    from flows.download import download_flow
    from vora_core.catalog import load_catalog
    from vora_core.stages import download
    from vora_core.workdir import run_unit_with_marker

    path = catalog(tmp_path, tmp_path / "run", "ray", ray_cluster.address, name="raybad",
                   download={"unit_retries": 1})
    cat = load_catalog(path)
    for unit in download.prepare_units(cat):  # the url partitions, then one of them loses its url column
        run_unit_with_marker(unit, lambda u: download.run_unit(cat, u))
    pq.write_table(pa.table({"link": ["nowhere"] * 4}), cat.run.sources("shapes") / "urls-00001.parquet")

    with pytest.raises(StageError) as e:
        download_flow(str(path))
    assert str(e.value).startswith("download: 1 of 4 units failed — shapes/00001: ")
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(
            name=TaskRunFilterName(any_=["download:shapes/00001"])))
    assert [r.run_count for r in runs if r.state.type.value == "FAILED"] == [2]  # the first try + 1 retry
    assert sorted(p.name for p in cat.run.shards("shapes").glob("unit-?????.json")) == \
        ["unit-00000.json", "unit-00002.json", "unit-00003.json"]  # the others finished


def test_an_unreachable_cluster_fails_fast_with_one_line(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"ray://127.0.0.1:{port}"
    path = catalog(tmp_path, tmp_path / "run", "ray", address)
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_HOME", None)  # the CLI's own embedded server, under the run directory
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "stage", "download", str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and error[0].startswith(
        f"error: orchestration.ray.address={address}: nothing answers at 127.0.0.1:{port} within 10s (Connection "
        "refused); start the cluster (`ray start --head`, `docker compose --profile ray up`) or fix the address"
    ), proc.stderr[-2000:]
    assert time.monotonic() - started < 300  # the embedded Prefect server's start is most of it


def node_processes(node) -> list[psutil.Process]:
    """A simulated node's processes (raylet, object store, ...) and their children (Ray workers)."""
    procs = [psutil.Process(info.process.pid) for infos in node.all_processes.values() for info in infos
             if info.process and psutil.pid_exists(info.process.pid)]
    return procs + [c for p in procs for c in p.children(recursive=True)]


def running_units(node) -> list[psutil.Process]:
    """Ray workers of `node` running a unit task (Ray sets the process title to `ray::<task name>`)."""
    found = []
    for p in node_processes(node):
        try:
            if "ray::run_unit_task" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            pass
    return found


def kill_node(node) -> None:
    """kill -9 every process of a Ray node: its raylet and object store, and the workers running units."""
    for p in node_processes(node):
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_node_killed_mid_stage_loses_nothing_and_a_rerun_does_nothing(ray_cluster, tmp_path):
    """Runs last in the module: the cluster loses a node here."""
    from flows.download import download_flow
    from vora_core.catalog import load_catalog
    from vora_core.manifest import open_manifest

    victim = ray_cluster.add_node(num_cpus=2)
    ray_cluster.wait_for_nodes()
    path = catalog(tmp_path, tmp_path / "run", "ray", ray_cluster.address, download={"resources": {"num_cpus": 2}})
    outcome: dict = {}
    flow = threading.Thread(target=lambda: outcome.update(results=download_flow(str(path))), daemon=True)
    flow.start()
    deadline = time.monotonic() + 600
    while not running_units(victim):  # a unit is mid-stage on the victim
        assert flow.is_alive() and time.monotonic() < deadline, "no unit started on the victim node"
        time.sleep(0.2)
    run = load_catalog(path).run
    done_before = set(unit_nodes(run.root, "shards/shapes/unit-*.json.done.json"))
    kill_node(victim)
    flow.join(timeout=900)
    ray_cluster.remove_node(victim, allow_graceful=False)  # its processes are gone; forget it
    assert not flow.is_alive() and "results" in outcome
    results = outcome["results"]
    assert sorted((r["unit"], r["status"]) for r in results) == [(f"shapes/{i:05d}", "done") for i in range(4)]
    nodes = unit_nodes(run.root, "shards/shapes/unit-*.json.done.json")
    assert len(nodes) == 4
    redone = {u: n for u, n in nodes.items() if u not in done_before}
    assert redone and victim.node_id not in redone.values()  # the lost unit finished on a surviving node
    con = open_manifest(run)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT sample_id) FROM images").fetchone() == (16, 16)
    finally:
        con.close()
    tars = sorted(p.name for p in run.shards("shapes").glob("*.tar"))
    assert tars == [f"{i:05d}.tar" for i in range(4)]
    assert not list(run.shards("shapes").glob(".*tmp*"))  # no temporaries of the killed attempt left
    before = {p: p.stat().st_mtime_ns for p in run.shards("shapes").iterdir()}
    assert {r["status"] for r in download_flow(str(path))} == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in run.shards("shapes").iterdir()} == before
