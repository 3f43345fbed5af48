"""recaption stage: a caption for every downloaded image, one task per shard (vora_core.stages.recaption)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_progress_artifact
from prefect.states import State

from flows import progress as terminal
from flows.common import (
    artifact_key,
    best_effort,
    check_failures,
    map_units,
    publish_table,
    report_progress,
    run_logger,
    run_name,
)
from vora_core.caption.recaption import resolve_model, shard_images
from vora_core.catalog import load_catalog
from vora_core.manifest import open_manifest
from vora_core.stages import recaption
from vora_core.workdir import Unit


@flow(name="recaption", log_prints=True, flow_run_name=run_name("recaption"))
def recaption_flow(catalog_path: str, force: bool = False) -> list[dict] | State:
    catalog = load_catalog(catalog_path)
    catalog.write_lock()
    settings = catalog.recaption
    units = recaption.plan(catalog)
    if units:
        resolve_model(catalog)  # build the tiny captioner once, before tasks run in parallel
    done, total = recaption.progress(catalog, units)
    progress = best_effort(
        "progress artifact", create_progress_artifact, 100.0 * done / max(total, 1),
        key=artifact_key(catalog.name, "recaption", "images"), description=f"recaption: images captioned of {total}",
    )
    images = terminal.open_meter("recaption", "images", total, start=done, plain_every_s=terminal.PLAIN_EVERY_S)
    counted = {u.id for u in units if u.done}

    def on_result(unit: Unit, result: dict) -> None:
        """Count the shard's images once, as its unit finishes (no re-planning)."""
        nonlocal done
        if unit.id not in counted:
            counted.add(unit.id)
            done += shard_images(Path(unit.params["tar"]))
        report_progress(progress, 100.0 * done / max(total, 1))
        terminal.advance("recaption", "images", done, total)

    results = map_units(  # closes the images meter with the stage's others
        recaption, catalog, "recaption", units, on_result=on_result, slot=settings.concurrency_limit,
        # Retries only where the network is flaky (a server engine); local engines fail deterministically.
        force=force, retries=settings.unit_retries if settings.engine == "openai" else 0,
        parallel=settings.parallel_units,
    )
    terminal.close_meter(images)  # no units: map_units returned before opening any
    open_manifest(catalog.run).close()  # rebuild the views (captions) over what is on disk now
    rows = recaption.summary(catalog)
    for row in rows:
        if row["quality"] != "ok":
            run_logger().warning("recaption %s: %s", row["source"], row["quality"])
    publish_table(catalog, "recaption", rows, "recaption: images, captions, flags, quality, images/s, tokens/s")
    return check_failures(catalog, recaption.failure_report(catalog), settings.max_failure_rate, results)
