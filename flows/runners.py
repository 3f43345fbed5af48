"""Where a stage's units run: in this process (`orchestration.runner: local`, the default: Prefect's
thread pool, as always) or as Ray tasks on a cluster (`runner: ray`, through prefect-ray's RayTaskRunner).

Under Ray, each unit is a Ray task asking its stage's `resources` (vora_core/resources.py); Ray reruns a
unit whose node died (`orchestration.ray.max_retries`), Prefect retries a unit that raised (the stage's
`unit_retries`), and the unit's marker still decides "done", whichever node ran it. Before a stage's
first unit, the cluster is checked: reachable, some node fits the request, every node sees the run
directory. Each check fails in seconds with one line, where Ray itself would wait forever.
"""

from __future__ import annotations

import logging
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

from prefect.futures import PrefectFuture
from prefect.tasks import Task

from vora_core.catalog import Catalog, RaySettings
from vora_core.errors import StageError
from vora_core.resources import unfit_message, unit_resources
from vora_core.stages import NAMES as STAGES
from vora_core.workdir import atomic_write_text

STORAGE_CHECK_TIMEOUT_S = 180.0  # a node's first Ray worker starts Python and imports this module
_storage_checked: set[tuple[str, str]] = set()  # (cluster, run root) pairs seen by every node


class UnitRunner:
    """Submits one stage's unit tasks: `submit(task, **parameters)` returns the task's Prefect future."""

    local = True

    def submit(self, task: Task, **parameters: Any) -> PrefectFuture:
        return task.submit(**parameters)

    def in_flight(self, parallel: int, units: int) -> int:
        """Units submitted at once: the stage's `parallel_units` locally; under Ray every unit (Ray runs
        as many as the nodes' resources fit and queues the rest)."""
        return max(1, parallel)


class RayUnitRunner(UnitRunner):
    local = False

    def __init__(self, runner: Any, options: dict[str, Any]):
        self.runner = runner
        self.options = options

    def submit(self, task: Task, **parameters: Any) -> PrefectFuture:
        from prefect_ray.context import remote_options

        with remote_options(**self.options):
            return self.runner.submit(task, parameters)

    def in_flight(self, parallel: int, units: int) -> int:
        return max(1, units)


_ray_task_runners: dict[str | None, Any] = {}  # one started RayTaskRunner per address, for the process


def unit_runner(catalog: Catalog, stage: str) -> UnitRunner:
    """The runner for `stage`'s units under the catalog's `orchestration` (stages only: an ablation's
    variant chain stays in this process)."""
    orch = catalog.orchestration
    if orch.runner == "local" or stage not in STAGES:
        return UnitRunner()
    import ray
    from prefect_ray import RayTaskRunner

    where = connect(orch.ray)
    nodes = ray.nodes()
    has_gpus = any(n.get("Resources", {}).get("GPU", 0) > 0 for n in nodes if n.get("Alive"))
    options = unit_resources(catalog, stage, has_gpus)
    if orch.ray.check_resources and (message := unfit_message(stage, options, nodes, where)):
        raise StageError(message)
    check_shared_storage(catalog.run.root, where)
    if orch.ray.address not in _ray_task_runners:  # joins the connection made above; never shuts Ray down
        _ray_task_runners[orch.ray.address] = RayTaskRunner(address=orch.ray.address).__enter__()
    options = {**options, "max_retries": orch.ray.max_retries, "scheduling_strategy": "SPREAD"}
    return RayUnitRunner(_ray_task_runners[orch.ray.address], options)


def _host_port(address: str) -> tuple[str, int] | None:
    rest = address.removeprefix("ray://")
    host, _, port = rest.rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


def connect(settings: RaySettings) -> str:
    """Join the Ray cluster `settings.address` once per process (null: start a Ray instance on this
    machine); returns how the cluster is named in messages. Nothing answering fails fast."""
    import ray

    address = settings.address
    where = f"orchestration.ray.address={address}" if address else "a Ray instance on this machine"
    if ray.is_initialized():
        return where
    hp = _host_port(address) if address and address != "auto" else None
    if hp:  # ray.init retries an unreachable address for minutes; one TCP connect says it in seconds
        try:
            socket.create_connection(hp, timeout=settings.connect_timeout_s).close()
        except OSError as e:
            raise StageError(f"{where}: nothing answers at {hp[0]}:{hp[1]} within {settings.connect_timeout_s:g}s "
                             f"({e.strerror or type(e).__name__}); start the cluster (`ray start --head`, "
                             "`docker compose --profile ray up`) or fix the address") from None
    kwargs: dict[str, Any] = {"namespace": "prefect", "logging_level": logging.WARNING,
                              "runtime_env": settings.runtime_env or None}
    if address is None:
        kwargs["include_dashboard"] = False
    try:
        ray.init(address=address, **kwargs)
    except Exception as e:  # ConnectionError for `auto` with no cluster, version mismatches, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise StageError(f"{where}: cannot join the Ray cluster ({type(e).__name__}: {first}); start it "
                         "(`ray start --head`) or fix the address") from None
    return where


def _sees(path: str, token: str) -> tuple[str, str, bool]:
    """Runs on one node: does the driver's probe file hold `token` here?"""
    import ray

    try:
        seen = Path(path).read_text() == token
    except OSError:
        seen = False
    return ray.get_runtime_context().get_node_id(), socket.gethostname(), seen


def check_shared_storage(root: Path, where: str) -> None:
    """Every live node must see the run directory (markers and outputs are shared through it): a file
    written here is read back on each node by a task pinned there."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    key = (where, str(root))
    if key in _storage_checked:
        return
    nodes = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes() if n.get("Alive")}
    token = uuid.uuid4().hex
    probe = root / f".ray-storage-probe-{token}"
    atomic_write_text(probe, token)
    try:
        remote = ray.remote(_sees)
        refs = [remote.options(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            node, soft=False)).remote(str(probe), token) for node in nodes]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=STORAGE_CHECK_TIMEOUT_S)
        answers = {node: (host, seen) for node, host, seen in ray.get(ready)}
    finally:
        probe.unlink(missing_ok=True)
    blind = [f"{nodes[n]} ({answers[n][0]})" for n in nodes if n in answers and not answers[n][1]]
    silent = [nodes[n] for n in nodes if n not in answers]
    if blind:
        raise StageError(f"the run directory {root} is not visible on Ray node(s) {', '.join(blind)} ({where}): "
                         "put the catalog's workdir on storage every node mounts at the same path (NFS, a "
                         "shared volume)")
    if silent:
        raise StageError(f"Ray node(s) {', '.join(silent)} ({where}) did not answer the run-directory check within "
                         f"{STORAGE_CHECK_TIMEOUT_S:g}s; check the nodes (`ray status`)")
    _storage_checked.add(key)


def ray_node_id() -> str | None:
    """The Ray node this code runs on, inside a Ray worker; None elsewhere (the local runner)."""
    if "ray" not in sys.modules:  # the local runner never imports Ray
        return None
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return None
    return ray.get_runtime_context().get_node_id()
