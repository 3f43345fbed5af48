"""mix stage: text sources → canonical conversations, then the pretrain and finetune mixtures (vora_core.stages.mix)."""

from __future__ import annotations

from prefect import flow
from prefect.states import Completed, State

from flows.common import artifact_key, check_failures, map_units, publish_table, run_name
from vora_core.catalog import load_catalog
from vora_core.data.mixture import mixture_table
from vora_core.manifest import open_manifest
from vora_core.stages import mix


@flow(name="mix", log_prints=True, flow_run_name=run_name("mix"))
def mix_flow(catalog_path: str, force: bool = False) -> list[dict] | State:
    catalog = load_catalog(catalog_path)
    catalog.write_lock()
    # Text units first: the mixtures read their output (a failed text unit stops the stage here).
    text = [u for u in mix.plan(catalog) if u.params["kind"] == "text"]
    results = map_units(mix, catalog, "mix-text", text, force=force)
    open_manifest(catalog.run).close()  # the text views now see the new parts (and llava's shards)
    # Rejected rows are checked before a mixture is built from them: above mix.max_failure_rate the stage
    # fails here (a source mostly rejected has a wrong format or image_dir, not a few bad rows).
    checked = check_failures(catalog, mix.failure_report(catalog), catalog.mix.max_failure_rate, results)
    # Planned again: a mixture's fingerprint covers the text units' outputs, which now exist.
    mixtures = [u for u in mix.plan(catalog) if u.params["kind"] == "mixture"]
    results += map_units(mix, catalog, "mix", mixtures, force=force)
    open_manifest(catalog.run).close()
    publish_table(catalog, "mix", mix.summary(catalog),
                  "mix: units (text sources: rows written / rejected by reason; mixtures: rows)")
    for stage in ("pretrain", "finetune"):
        publish_table(catalog, f"mixture-{stage}", mixture_table(catalog, stage),
                      f"mixture for {stage}: rows, share and estimated tokens per source; the caption funnel",
                      outputs=catalog.run.mixture(stage), key=artifact_key(catalog.name, "mixture", stage))
    if isinstance(checked, State):  # completes "with failures", over every unit's result
        return Completed(name=checked.name, message=checked.message, data=results)
    return results
