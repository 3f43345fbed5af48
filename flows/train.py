"""pretrain and finetune stages: one task each (the torchrun training run, vora_core.stages.train).

While the run trains, a progress artifact follows its metrics.jsonl; at the end a table artifact
(steps, tokens, final losses, tokens/s) and a markdown artifact with the loss curve."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import flow
from prefect.artifacts import create_progress_artifact

from flows import progress as terminal
from flows.common import (
    artifact_key,
    best_effort,
    map_units,
    png_markdown,
    publish_markdown,
    publish_table,
    report_progress,
    run_logger,
    run_name,
)
from vora_core.catalog import load_catalog
from vora_core.stages import STAGES


def step_progress(stage: str, artifact: Any) -> Callable[[dict], None]:
    """The `on_progress` hook of a training unit: moves the progress artifact and the terminal meter
    at each logged step, and a meter of its own for the tiny models' training before it (then a log line
    with what each learnt)."""

    def on_progress(record: dict) -> None:
        if record.get("built"):  # a tiny model is ready: what it learnt
            best_effort("run log", run_logger().info, "%s %s: %s", stage, record["built"], record["figures"])
        elif record.get("building"):  # the tiny models' own training, before the first step
            best_effort("progress line", terminal.advance, f"{stage} {record['building']}", record["unit"],
                        record["done"], record["total"])
        elif record.get("total_steps"):
            report_progress(artifact, 100.0 * record["step"] / record["total_steps"])
            best_effort("progress line", terminal.advance, stage, "steps", int(record["step"]),
                        int(record["total_steps"]))

    return on_progress


def train_flow_body(catalog_path: str, stage: str, force: bool) -> list[dict]:
    catalog = load_catalog(catalog_path)
    catalog.write_lock()
    train = STAGES[stage]
    units = train.plan(catalog)
    progress = best_effort("progress artifact", create_progress_artifact, 0.0,
                           key=artifact_key(catalog.name, stage, "steps"), description=f"{stage}: optimizer steps done")
    results = map_units(train, catalog, stage, units, force=force,
                        hooks={"on_progress": step_progress(stage, progress)})
    publish_table(catalog, stage, train.summary(catalog),
                  f"{stage}: steps, tokens, final losses, tokens/s")
    publish_markdown(catalog, f"{stage}-loss",
                     png_markdown(f"{stage}: loss", catalog.run.stage_dir(stage) / "loss.png"),
                     f"{stage}: loss curve")
    return results


@flow(name="pretrain", log_prints=True, flow_run_name=run_name("pretrain"))
def pretrain_flow(catalog_path: str, force: bool = False) -> list[dict]:
    return train_flow_body(catalog_path, "pretrain", force)


@flow(name="finetune", log_prints=True, flow_run_name=run_name("finetune"))
def finetune_flow(catalog_path: str, force: bool = False) -> list[dict]:
    return train_flow_body(catalog_path, "finetune", force)
