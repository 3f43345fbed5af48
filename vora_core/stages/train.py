"""The pretrain and finetune stages: one unit each, the training run under torchrun
(mechanism: vora_core.train.prepare builds the tiny models and the run spec; vora_core.train.launch).

`pretrain` and `finetune` below are the two stages of the registry; `run_unit` takes `on_progress`,
called with each logged metrics record while the run trains.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vora_core.catalog import Catalog
from vora_core.train.launch import launch
from vora_core.train.prepare import (
    OPERATIONAL,
    build_tiny_models,
    fresh_start_if_stale,
    is_tiny,
    mixture_dir,
    mixture_identity,
    model_paths,
    prepare_spec,
    settings_of,
    stage_model,
    summarise,
)
from vora_core.train.spec import STAGES
from vora_core.workdir import Unit, dir_identity, fingerprint, read_marker


def plan(catalog: Catalog, stage: str) -> list[Unit]:
    """One unit: the training run. Its fingerprint covers the settings that change the result, the
    mixture files (by content: a copied run, or a mixture rebuilt with the same bytes, does not retrain)
    and the input models. The fingerprint's earlier form (mixture files by name, size and mtime) still
    counts as done, and still resumes its checkpoints."""
    fp, earlier = (_fingerprint(catalog, stage, content) for content in (True, False))
    out = catalog.run.stage_dir(stage) / "final"
    return [Unit(stage=stage, id=stage, output=str(out), fingerprint=fp,
                 params={"mixture": str(mixture_dir(catalog, stage))},
                 earlier_fingerprints=(earlier,) if earlier != fp else ())]


def _fingerprint(catalog: Catalog, stage: str, content: bool) -> str:
    settings = settings_of(catalog, stage).model_dump(mode="json")
    trained = {k: v for k, v in settings.items() if k not in OPERATIONAL}
    world = settings["nproc_per_node"] * settings["nnodes"]  # the data order depends on it
    if stage == "pretrain":
        llm, teacher = model_paths(catalog)

        def identity(name: str | None, path: str | None) -> Any:
            # A tiny model is built by this stage from the settings (and, for the LLM's tokenizer, the
            # mixtures' text): identify it by those, not by its directory, which the first run creates.
            if is_tiny(name):
                return ["tiny", [mixture_identity(catalog, s, content) for s in STAGES] if path == llm else None]
            return dir_identity(Path(path)) if path and Path(path).exists() else path

        inputs = [catalog.model.model_dump(mode="json"), identity(catalog.model.llm, llm),
                  identity(catalog.model.teacher, teacher)]
    else:
        path = Path(catalog.finetune.model or catalog.run.stage_dir("merge"))
        inputs = [catalog.model.transform, catalog.model.attn_implementation, dir_identity(path)]
    return fingerprint(stage, trained, world, mixture_identity(catalog, stage, content), inputs)


def run_unit(catalog: Catalog, unit: Unit, on_progress: Callable[[dict], None] | None = None) -> dict:
    """Build the tiny models if asked, the sample index, then train under torchrun."""
    stage = unit.stage
    settings = settings_of(catalog, stage)
    fresh_start_if_stale(catalog.run.stage_dir(stage), unit)
    if stage == "pretrain":
        build_tiny_models(catalog, on_progress)
    model, tokenizer_dir = stage_model(catalog, stage)
    spec, index_stats = prepare_spec(stage, catalog.run.stage_dir(stage), unit.params["mixture"], catalog.run, model,
                                     tokenizer_dir, settings, catalog.model.transform,
                                     catalog.model.attn_implementation)
    stats = launch(spec, on_progress=on_progress, run_id=f"{catalog.name}-{stage}")
    return {**stats, **summarise(spec.metrics), "index": index_stats, "final": str(spec.final)}


def summary(catalog: Catalog, stage: str) -> list[dict]:
    """One row per unit for status tables and artifacts."""
    rows = []
    for unit in plan(catalog, stage):
        stats = (read_marker(unit.output) or {}).get("stats", {}) if unit.done else {}
        live = summarise(catalog.run.stage_dir(stage) / "metrics.jsonl") if not stats else {}
        rows.append({
            "unit": unit.id, "done": bool(stats), "steps": stats.get("steps"), "tokens": stats.get("tokens"),
            "samples": stats.get("samples"), "final_loss": _round(stats.get("final_loss", live.get("final_loss"))),
            "final_lm_loss": _round(stats.get("final_lm_loss", live.get("final_lm_loss"))),
            "final_distill": _round(stats.get("final_distill", live.get("final_distill"))),
            "tokens_per_s": _round(stats.get("tokens_per_s", live.get("tokens_per_s")), 1),
            "nan_steps": stats.get("nan_steps"), "seconds": stats.get("seconds"), "output": unit.output,
        })
    return rows


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, digits)


@dataclass(frozen=True)
class TrainStage:
    """One training stage of the registry: the module's functions bound to `name`."""

    name: str

    def plan(self, catalog: Catalog) -> list[Unit]:
        return plan(catalog, self.name)

    def summary(self, catalog: Catalog) -> list[dict]:
        return summary(catalog, self.name)

    @staticmethod
    def run_unit(catalog: Catalog, unit: Unit, on_progress: Callable[[dict], None] | None = None) -> dict:
        return run_unit(catalog, unit, on_progress)


pretrain = TrainStage("pretrain")
finetune = TrainStage("finetune")
