"""Prefect plumbing shared by every stage flow: one generic unit task, its cache policy, artifacts.

A stage flow plans units with `vora_core`, hands them to `map_units`, and publishes the stage's
summary table. The unit's completion marker is the source of truth for "done"; Prefect's cache is a
speed-up on top of it, keyed by (stage, unit id, settings fingerprint) + the task's source.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import TASK_SOURCE, CachePolicy
from prefect.futures import PrefectFuture, as_completed
from prefect.tasks import exponential_backoff
from prefect.utilities.hashing import hash_objects

from vora_core.catalog import Catalog, load_catalog
from vora_core.errors import StageError
from vora_core.stages import resolve
from vora_core.workdir import Unit, run_unit_with_marker


@dataclass
class UnitMarkerPolicy(CachePolicy):
    """Cache key = (stage, unit id, fingerprint) + task source, offered only while the unit's marker
    matches and its output exists — so a deleted or stale output is never served from cache."""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kw: Any):
        unit = inputs.get("unit")
        if not isinstance(unit, Unit) or not unit.done:
            return None
        source = TASK_SOURCE.compute_key(task_ctx=task_ctx, inputs=inputs, flow_parameters=flow_parameters, **kw)
        return hash_objects(unit.stage, unit.id, unit.fingerprint, source)


@task(cache_policy=UnitMarkerPolicy(), persist_result=True)
def run_unit_task(catalog_path: str, unit: Unit, runner: str, force: bool = False) -> dict:
    """Run one unit through `runner` (`module:function(catalog, unit) -> stats`) under its marker."""
    catalog = load_catalog(catalog_path)
    work = resolve(runner)
    result = run_unit_with_marker(unit, lambda u: work(catalog, u), force=force)
    get_run_logger().info("%s %s: %s", unit.stage, unit.id, result.get("status"))
    return result


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def map_units(
    catalog: Catalog,
    catalog_path: str,
    label: str,
    units: Sequence[Unit],
    runner: str,
    *,
    force: bool = False,
    retries: int = 0,
    parallel: int = 1,
) -> list[dict]:
    """Run `units` as tasks, at most `parallel` at a time, with a progress artifact.

    A unit that fails (after its retries) is recorded with its error while the others finish; the
    stage then fails with a `StageError` naming every failed unit.
    """
    logger = get_run_logger()
    if not units:
        logger.info("%s: no units", label)
        return []
    unit_task = run_unit_task.with_options(
        task_run_name=f"{label}:{{unit.id}}",
        retries=retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=2) if retries else 0,
        retry_jitter_factor=0.5 if retries else None,
        refresh_cache=True if force else None,
    )
    progress = create_progress_artifact(
        0.0, key=artifact_key(catalog.name, label, "progress"), description=f"{label}: units finished"
    )
    pending = list(units)
    running: dict[PrefectFuture, Unit] = {}
    results: list[dict] = []
    while pending or running:
        while pending and len(running) < max(1, parallel):
            unit = pending.pop(0)
            running[unit_task.submit(catalog_path, unit, runner, force)] = unit
        fut = next(as_completed(list(running)))
        unit = running.pop(fut)
        try:
            result = dict(fut.result())
            if fut.state.name == "Cached":  # served by Prefect's cache: nothing ran
                result["status"] = "skipped"
            results.append(result)
        except Exception as e:  # reported per unit; the stage fails below, after the others finish
            logger.error("%s %s failed: %s", label, unit.id, e)
            results.append({"unit": unit.id, "status": "failed", "error": f"{type(e).__name__}: {e}"})
        update_progress_artifact(progress, 100.0 * len(results) / len(units))
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        details = "; ".join(f"{r['unit']}: {r['error']}" for r in failed)
        raise StageError(f"{label}: {len(failed)} of {len(units)} units failed — {details}")
    return results


def publish_table(catalog: Catalog, stage: str, rows: list[dict], description: str) -> None:
    if rows:
        create_table_artifact(rows, key=artifact_key(catalog.name, stage), description=description)


def unit_counts(results: list[dict]) -> dict[str, int]:
    counts = {"done": 0, "skipped": 0, "failed": 0}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return counts
