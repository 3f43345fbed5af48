"""vora_pipeline: every stage, chained as subflows, with only/from/until/force; ends with a summary artifact."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, tags

from flows.common import StageName, publish_markdown, run_name, unit_counts
from flows.download import download_flow
from flows.evaluate import evaluate_flow
from flows.merge import merge_flow
from flows.mix import mix_flow
from flows.recaption import recaption_flow
from flows.train import finetune_flow, pretrain_flow
from vora_core.catalog import Catalog, load_catalog
from vora_core.stages import NAMES, STAGES, check_stage, select_stages

# Stage name → its flow (the stages and their order: vora_core.stages.STAGES).
STAGE_FLOWS: dict[str, Callable[..., object]] = {
    "download": download_flow,
    "recaption": recaption_flow,
    "mix": mix_flow,
    "pretrain": pretrain_flow,
    "merge": merge_flow,
    "finetune": finetune_flow,
    "evaluate": evaluate_flow,
}
assert tuple(STAGE_FLOWS) == NAMES, "STAGE_FLOWS must hold one flow per stage of vora_core.stages.STAGES"
DESCRIPTION = (
    "VoRA (Vision as LoRA): download → recaption → mix → pretrain → merge → finetune → evaluate. Every unit "
    "whose completion marker matches is skipped, so a rerun continues where the last one stopped."
)


@flow(name="vora-pipeline", description=DESCRIPTION, flow_run_name=run_name("pipeline"))
def vora_pipeline(
    catalog_path: str,
    only: list[StageName] | None = None,
    from_stage: StageName | None = None,
    until_stage: StageName | None = None,
    force: list[StageName] | None = None,
) -> dict[str, object]:
    """Run the stages of the catalog's pipeline.

    Args:
        catalog_path: the catalog YAML; a relative path is resolved against the worker's working
            directory (the project root in the docker-compose stack).
        only: run just these stages (excludes from_stage/until_stage).
        from_stage: run this stage and every later one.
        until_stage: stop after this stage.
        force: redo these stages' units even where their markers match.
    """
    catalog_path = str(Path(catalog_path).resolve())
    catalog = load_catalog(catalog_path)
    catalog.write_lock()  # fail fast on a bad catalog, before any stage
    forced = {check_stage(s) for s in force or []}
    stages = select_stages(NAMES, only=only, from_=from_stage, until=until_stage)
    get_run_logger().info("stages: %s", ", ".join(stages))
    results: dict[str, object] = {}
    try:
        for stage in stages:
            results[stage] = None  # a stage that raises stays None: "failed" in the summary
            with tags(*(["forced"] if stage in forced else [])):
                results[stage] = STAGE_FLOWS[stage](catalog_path, force=stage in forced)
    finally:
        publish_markdown(catalog, "pipeline-summary", summary_markdown(catalog, results),
                         "the pipeline run: every stage's units, key figures and outputs")
    return results


def summary_markdown(catalog: Catalog, results: dict[str, Any]) -> str:
    """Per stage: units done/skipped/failed, its status table, where its outputs are; loss curves; eval scores."""
    lines = [f"# {catalog.name}: pipeline summary", "", f"Run directory: `{catalog.run.root}`", ""]
    for stage, result in results.items():
        lines += [f"## {stage}", ""]
        if isinstance(result, list):
            counts = unit_counts(result)
            lines.append(f"units: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed")
        else:
            lines.append("**failed** (see the stage's flow run)")
        lines += ["", f"outputs: `{catalog.run.outputs(stage)}`", ""]
        try:
            lines += markdown_table(STAGES[stage].summary(catalog))
        except Exception as e:  # reporting never fails the run
            lines.append(f"(no figures: {type(e).__name__}: {e})")
        if stage in ("pretrain", "finetune"):
            png = catalog.run.stage_dir(stage) / "loss.png"
            lines += ["", f"loss curve: `{png}`" + ("" if png.exists() else " (not written)")]
        lines.append("")
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> list[str]:
    if not rows:
        return ["(nothing yet)"]
    cols = list(dict.fromkeys(k for r in rows for k in r))

    def cell(v: Any) -> str:
        if isinstance(v, dict):
            v = ", ".join(f"{k}: {n}" for k, n in v.items())
        return ("" if v is None else str(v)).replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
            *("| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows)]
