"""vora_pipeline: every stage, chained as subflows, with only/from/until/force."""

from __future__ import annotations

from collections.abc import Callable

from prefect import flow, get_run_logger

from flows.download import download_flow
from flows.evaluate import evaluate_flow
from flows.merge import merge_flow
from flows.mix import mix_flow
from flows.recaption import recaption_flow
from flows.train import finetune_flow, pretrain_flow
from vora_core.catalog import load_catalog
from vora_core.stages import check_stage, select_stages

# Stage name → its flow, in pipeline order. Later stages register here as they are built.
STAGE_FLOWS: dict[str, Callable[..., object]] = {
    "download": download_flow,
    "recaption": recaption_flow,
    "mix": mix_flow,
    "pretrain": pretrain_flow,
    "merge": merge_flow,
    "finetune": finetune_flow,
    "evaluate": evaluate_flow,
}
# What a plain `vora run` (or --from/--until) chains: every stage.
CHAINED = tuple(STAGE_FLOWS)


@flow(name="vora-pipeline")
def vora_pipeline(
    catalog_path: str,
    only: list[str] | None = None,
    from_stage: str | None = None,
    until_stage: str | None = None,
    force: list[str] | None = None,
) -> dict[str, object]:
    load_catalog(catalog_path).write_lock()  # fail fast on a bad catalog, before any stage
    forced = {check_stage(s) for s in force or []}
    stages = select_stages(STAGE_FLOWS if only else CHAINED, only=only, from_=from_stage, until=until_stage)
    get_run_logger().info("stages: %s", ", ".join(stages))
    return {stage: STAGE_FLOWS[stage](catalog_path, force=stage in forced) for stage in stages}
