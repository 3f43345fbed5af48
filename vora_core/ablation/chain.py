"""One unit per variant: its stages (pretrain → merge → finetune → evaluate) run in order by the stage
modules themselves, on the variant's catalog, each under its own markers — so a killed variant resumes
where it stopped (training from its last checkpoint) and a finished one is skipped.

The variant's marker (`ablations/<variant>/result.json.done.json`) fingerprints the variant's catalog,
the stages asked for and the pretrain unit's fingerprint (mixture and input models), which are all
known before anything runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from vora_core.ablation.variants import Grid, check_stages, variant_root, write_variant_catalog
from vora_core.catalog import Catalog, load_catalog
from vora_core.workdir import Unit, atomic_write_json, fingerprint, run_unit_with_marker

log = logging.getLogger(__name__)

STAGE = "ablate"


def prepare_shared(catalog: Catalog, on_progress: Callable[[dict], None] | None = None) -> dict[str, str]:
    """Build the pieces every variant shares once, before any variant runs: the tiny LLM with its
    tokenizer and the (pretrained) tiny teacher in <workdir>/models/ (`on_progress`: build_tiny_models')."""
    from vora_core.train.prepare import build_tiny_models

    return {name: str(path) for name, path in build_tiny_models(catalog, on_progress).items()}


def resolve_imports() -> None:
    """Import what the variants' stages use, here, once: transformers resolves its names lazily and
    that is not thread-safe — two variants running in threads (`--parallel`) can each see a half-made
    module ("cannot import name 'AutoTokenizer'")."""
    import transformers

    import vora_core.model.modeling  # noqa: F401 - imported for its side effect
    import vora_core.stages  # noqa: F401

    for name in ("AutoConfig", "AutoTokenizer", "AutoImageProcessor", "AutoModel", "AutoModelForCausalLM",
                 "CLIPImageProcessor", "Aimv2VisionModel", "Aimv2VisionConfig", "DynamicCache",
                 "PreTrainedTokenizerFast", "Qwen2Config", "Qwen2ForCausalLM", "LlamaConfig", "LlamaForCausalLM"):
        getattr(transformers, name)


def plan(catalog: Catalog, grid: Grid, only: list[str] | None = None) -> list[Unit]:
    """Write each variant's catalog and return one unit per variant, in the grid's order."""
    from vora_core.stages import train

    resolve_imports()
    stages = check_stages(only)
    units = []
    for name, variant in grid.variants.items():
        path = write_variant_catalog(catalog, name, variant, grid)
        derived = load_catalog(path)
        pretrain = train.pretrain.plan(derived)[0]
        dumped = derived.model_dump(mode="json")
        fp, *earlier = (fingerprint(STAGE, dumped, stages, pretrain_fp)
                        for pretrain_fp in (pretrain.fingerprint, *pretrain.earlier_fingerprints))
        units.append(Unit(stage=STAGE, id=name, output=str(variant_root(catalog, name) / "result.json"),
                          fingerprint=fp, params={"catalog": str(path), "stages": stages},
                          earlier_fingerprints=tuple(earlier)))
    return units


# merge and evaluate load models in this process; transformers' loading is not thread-safe (it swaps
# global init functions and the default device), so variants running in threads take turns there.
# Training runs under torchrun in child processes: those overlap.
IN_PROCESS_MODELS = threading.Lock()


def run_stages(derived: Catalog, stages: list[str], on_progress: Callable[[dict], None] | None = None) -> dict:
    """The variant's stages through the stage modules (each skips what its markers say is done)."""
    from vora_core.stages import run_stage
    from vora_core.train.spec import STAGES as TRAINING

    results: dict[str, list[dict]] = {}
    for stage in stages:
        if stage in TRAINING:  # records name the stage: one hook follows a variant's two trainings
            results[stage] = run_stage(stage, derived,
                                       on_progress=on_progress and (lambda r, s=stage: on_progress({**r, "stage": s})))
        else:
            with IN_PROCESS_MODELS:
                results[stage] = run_stage(stage, derived)
        log.info("%s %s: %s", derived.name, stage, sorted({r["status"] for r in results[stage]}))
    return results


def run_unit(catalog: Catalog, unit: Unit, on_progress: Callable[[dict], None] | None = None) -> dict:
    """Run one variant; `result.json` records each stage's unit statuses and stats. `on_progress` gets
    the training runs' metrics records with the `variant` and `stage` they belong to."""
    derived = load_catalog(unit.params["catalog"])
    results = run_stages(derived, unit.params["stages"],
                         on_progress and (lambda record: on_progress({**record, "variant": unit.id})))
    atomic_write_json(unit.output, results)
    return {"variant": unit.id, "stages": {s: [r["status"] for r in rows] for s, rows in results.items()},
            "headline": variant_headline(results)}


def variant_headline(results: dict[str, list[dict]]) -> str:
    """A variant's final losses and scores in one phrase for its log line (`ablate <variant>: done, …`)."""
    parts = [f"{stage} loss {rows[0]['final_loss']:.3f}" for stage, rows in results.items()
             if rows and rows[0].get("final_loss") is not None]
    parts += [f"{r['unit']} {r['value']:.3f}" for r in results.get("evaluate", []) if r.get("value") is not None]
    return ", ".join(parts)


def run_ablation(catalog: Catalog, grid: Grid, only: list[str] | None = None) -> list[dict]:
    """The ablation without Prefect: shared models, then every variant in turn (data stages not included)."""
    prepare_shared(catalog)
    return [run_unit_with_marker(u, lambda unit: run_unit(catalog, unit)) for u in plan(catalog, grid, only)]


def variant_dirs(catalog: Catalog, grid: Grid) -> dict[str, Path]:
    return {name: variant_root(catalog, name) for name in grid.variants}
