"""merge stage: LoRA folded into the LLM (vora_core.model.merge), verified on a probe batch."""

from __future__ import annotations

from prefect import flow

from flows.common import map_units, publish_table, run_name
from vora_core import merge_stage
from vora_core.catalog import load_catalog


@flow(name="merge", log_prints=True, flow_run_name=run_name("merge"))
def merge_flow(catalog_path: str, force: bool = False) -> list[dict]:
    catalog = load_catalog(catalog_path)
    catalog.write_lock()
    results = map_units(catalog, catalog_path, "merge", merge_stage.plan(catalog), "vora_core.merge_stage:run_unit",
                        force=force)
    publish_table(catalog, "merge", merge_stage.summary(catalog),
                  "merge: max |logit difference| merged vs unmerged on the probe batch, and its bound")
    return results
