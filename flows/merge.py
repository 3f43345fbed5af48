"""merge stage: LoRA folded into the LLM (vora_core.stages.merge), verified on a probe batch."""

from __future__ import annotations

from prefect import flow

from flows.common import map_units, publish_table, run_name
from vora_core.catalog import load_catalog
from vora_core.stages import merge


@flow(name="merge", log_prints=True, flow_run_name=run_name("merge"))
def merge_flow(catalog_path: str, force: bool = False) -> list[dict]:
    catalog = load_catalog(catalog_path)
    catalog.write_lock()
    results = map_units(merge, catalog, "merge", merge.plan(catalog), force=force)
    publish_table(catalog, "merge", merge.summary(catalog),
                  "merge: max |logit difference| merged vs unmerged on the probe batch, and its bound")
    return results
