"""What one unit of each stage asks of a Ray node, and whether some node of a cluster can give it.

Pure functions over the catalog and Ray's node table (`ray.nodes()` rows): flows/runners.py asks Ray,
this module decides. A stage's `resources` section overrides the defaults below, key by key.
"""

from __future__ import annotations

from typing import Any

from vora_core.catalog import Catalog, Resources
from vora_core.errors import StageError
from vora_core.stages import NAMES as STAGES


def _on_gpu(device: str) -> bool:
    return device != "cpu"


def default_resources(catalog: Catalog, stage: str, cluster_has_gpus: bool) -> dict[str, float]:
    """The defaults the README names: download = its process count in CPUs; recaption hf = 1 GPU, vllm =
    its tensor-parallel size in GPUs (openai: the GPUs are the servers'); training = nproc_per_node GPUs;
    evaluate = 1 GPU; mix = DuckDB's threads in CPUs. GPUs only on a cluster that has some."""
    cpus: float = 1
    gpus: float = 0
    if stage == "download":
        cpus = catalog.download.processes_count
    elif stage == "recaption":
        r = catalog.recaption
        cpus = r.cpu_threads or 1
        gpus = {"vllm": r.vllm.tensor_parallel_size, "hf": 1 if _on_gpu(r.device) else 0}.get(r.engine, 0)
    elif stage == "mix":
        cpus = catalog.mix.threads
    elif stage in ("pretrain", "finetune"):
        t = getattr(catalog, stage)
        gpus = t.nproc_per_node if _on_gpu(t.device) else 0
    elif stage == "evaluate":
        gpus = 1 if _on_gpu(catalog.evaluate.device) else 0
    return {"num_cpus": cpus, "num_gpus": gpus if cluster_has_gpus else 0}


def unit_resources(catalog: Catalog, stage: str, cluster_has_gpus: bool) -> dict[str, Any]:
    """Ray remote options for one unit of `stage`: the defaults, overridden by `<stage>.resources`."""
    if stage not in STAGES:
        raise StageError(f"{stage!r} is not a stage; one of: {', '.join(STAGES)}")
    asked: Resources = getattr(catalog, stage).resources
    options: dict[str, Any] = default_resources(catalog, stage, cluster_has_gpus)
    if asked.num_cpus is not None:
        options["num_cpus"] = asked.num_cpus
    if asked.num_gpus is not None:
        options["num_gpus"] = asked.num_gpus
    if asked.memory is not None:
        options["memory"] = asked.memory
    if asked.custom:
        options["resources"] = dict(asked.custom)
    return options


def as_ray_names(options: dict[str, Any]) -> dict[str, float]:
    """Remote options in the names of Ray's node table (CPU, GPU, memory, custom names)."""
    need = {"CPU": options.get("num_cpus", 0), "GPU": options.get("num_gpus", 0), "memory": options.get("memory", 0)}
    need.update(options.get("resources", {}))
    return {k: float(v) for k, v in need.items() if v}


def unfit_message(stage: str, options: dict[str, Any], nodes: list[dict[str, Any]], where: str) -> str | None:
    """None when some live node has every resource a unit of `stage` asks; else one line saying what is
    asked, the most any node has, and the fix (a Ray task that fits no node waits forever)."""
    need = as_ray_names(options)
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", n.get("alive"))]
    if any(all(have.get(k, 0) >= v for k, v in need.items()) for have in alive):
        return None
    asked = ", ".join(f"{k}={v:g}" for k, v in need.items())
    largest = ", ".join(f"{k}={max((h.get(k, 0) for h in alive), default=0):g}" for k in need)
    return (f"{stage}.resources: a unit asks {asked} but no node of the Ray cluster ({where}, {len(alive)} live "
            f"node(s)) has that much (the most one node has: {largest}); lower {stage}.resources (or the "
            "setting its default follows), or add such a node")
