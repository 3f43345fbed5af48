"""recaption stage: a caption for every downloaded image, one task per shard (vora_core.caption)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

from prefect import flow
from prefect.artifacts import create_progress_artifact
from prefect.concurrency.sync import concurrency
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
from vora_core.caption import recaption
from vora_core.catalog import Catalog, load_catalog
from vora_core.manifest import open_manifest
from vora_core.workdir import Unit


@contextlib.contextmanager
def gpu_slot(name: str | None) -> Iterator[None]:
    """One slot of the Prefect global concurrency limit `name` (a limit not created yet is skipped
    with a warning: `prefect gcl create <name> --limit <GPUs or servers>`)."""
    if not name:
        yield
        return
    with concurrency(name, occupy=1, strict=False):
        yield


def run_unit(catalog: Catalog, unit: Unit) -> dict:
    """The runner each task resolves: caption one shard under a GPU slot, then report progress."""
    with gpu_slot(catalog.recaption.concurrency_limit):
        stats = recaption.run_unit(catalog, unit)
    if counts := best_effort("recaption progress", recaption.progress, catalog, finished=unit.id):
        report_progress(unit.params.get("progress_artifact"), 100.0 * counts[0] / max(counts[1], 1))
        terminal.advance("recaption", "images", *counts)
    return stats


@flow(name="recaption", log_prints=True, flow_run_name=run_name("recaption"))
def recaption_flow(catalog_path: str, force: bool = False) -> list[dict] | State:
    catalog = load_catalog(catalog_path)
    catalog.write_lock()
    settings = catalog.recaption
    units = recaption.plan(catalog)
    if units:
        recaption.resolve_model(catalog)  # build the tiny captioner once, before tasks run in parallel
    done, total = recaption.progress(catalog)
    progress = best_effort(
        "progress artifact", create_progress_artifact, 100.0 * done / max(total, 1),
        key=artifact_key(catalog.name, "recaption", "images"), description=f"recaption: images captioned of {total}",
    )
    units = [dataclasses.replace(u, params={**u.params, "progress_artifact": progress}) for u in units]
    images = terminal.open_meter("recaption", "images", total, start=done, plain_every_s=terminal.PLAIN_EVERY_S)
    results = map_units(  # closes the images meter with the stage's others
        catalog, catalog_path, "recaption", units, "flows.recaption:run_unit",
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
