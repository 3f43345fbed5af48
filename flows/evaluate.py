"""evaluate stage: one task per benchmark (vora_core.stages.evaluate), then eval/summary.json."""

from __future__ import annotations

from prefect import flow
from prefect.states import State

from flows.common import check_failures, map_units, publish_table, run_name
from vora_core.catalog import load_catalog
from vora_core.stages import evaluate


@flow(name="evaluate", log_prints=True, flow_run_name=run_name("evaluate"))
def evaluate_flow(catalog_path: str, force: bool = False) -> list[dict] | State:
    catalog = load_catalog(catalog_path)
    catalog.write_lock()
    # One benchmark at a time: they share one loaded model (and one GPU).
    results = map_units(evaluate, catalog, "evaluate", evaluate.plan(catalog), force=force)
    evaluate.finish(catalog)
    publish_table(catalog, "evaluate", evaluate.summary(catalog),
                  "evaluate: headline metric per benchmark, questions scored / rejected, samples/s")
    # A curated benchmark with rejected questions has a wrong layout or missing images: above
    # evaluate.max_failure_rate the stage fails, naming the share (the scores are written either way).
    return check_failures(catalog, evaluate.failure_report(catalog), catalog.evaluate.max_failure_rate, results)
