"""Prefect plumbing shared by every stage flow: one generic unit task, its cache policy, artifacts.

A stage flow plans units with `vora_core`, hands them to `map_units`, and publishes the stage's
summary table. The unit's completion marker is the source of truth for "done"; Prefect's cache is a
speed-up on top of it, keyed by (stage, unit id, settings fingerprint) + the task's source.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import yaml
from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import TASK_SOURCE, CachePolicy
from prefect.concurrency.sync import concurrency
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.states import Completed, State
from prefect.tasks import exponential_backoff
from prefect.utilities.annotations import quote
from prefect.utilities.hashing import hash_objects

from flows import progress as terminal
from flows.runners import ray_node_id, unit_runner
from vora_core.catalog import Catalog
from vora_core.errors import StageError
from vora_core.stages import NAMES
from vora_core.status import headline
from vora_core.workdir import Unit, run_unit_with_marker

T = TypeVar("T")
# The stage names as a type: the deployment's parameter schema lists them (an enum in the UI).
StageName = Literal["download", "recaption", "mix", "pretrain", "merge", "finetune", "evaluate"]
assert StageName.__args__ == NAMES, "StageName must list vora_core.stages.STAGES in order"


class RunsUnits(Protocol):
    """What `map_units` runs: a stage (vora_core.stages) or any module with the same `run_unit`."""

    def run_unit(self, catalog: Catalog, unit: Unit, /) -> dict: ...


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The run's logger inside a flow or task run (shipped to the UI), the `vora` logger elsewhere."""
    try:
        return get_run_logger()
    except Exception:
        return logging.getLogger("vora")


# After a reporting call fails (server gone, network down), reporting pauses this long: the Prefect
# client retries each call with backoff, and work must not wait on that at every progress step.
REPORTING_PAUSE_S = 60.0
_reporting_paused_until = 0.0


def best_effort(what: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Reporting (artifacts, progress, UI updates) never fails the work: any error is a warning,
    and reporting pauses for `REPORTING_PAUSE_S` before it is tried again."""
    global _reporting_paused_until
    if time.monotonic() < _reporting_paused_until:
        return None
    try:
        return call(*args, **kwargs)
    except Exception as e:
        _reporting_paused_until = time.monotonic() + REPORTING_PAUSE_S
        run_logger().warning("%s failed (the work carries on; reporting pauses %gs): %s: %s",
                                          what, REPORTING_PAUSE_S, type(e).__name__, e)
        return None


def report_progress(artifact: Any, percent: float) -> None:
    """Move a progress artifact (made by `create_progress_artifact`; None: nothing to move)."""
    if artifact is not None:
        best_effort("progress update", update_progress_artifact, artifact, percent)


def run_name(stage: str) -> Callable[[], str]:
    """A flow-run namer: `<catalog name>-<stage>`, `-forced` appended when `force` is set."""

    def name() -> str:
        params = flow_run.parameters
        path = Path(params.get("catalog_path", ""))
        try:
            catalog = str(yaml.safe_load(path.read_text()).get("name") or path.stem)
        except Exception:  # a bad catalog fails in the flow itself, with its own message
            catalog = path.stem or "vora"
        return f"{catalog}-{stage}" + ("-forced" if params.get("force") else "")

    return name


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


@contextlib.contextmanager
def gpu_slot(name: str | None) -> Iterator[None]:
    """One slot of the Prefect global concurrency limit `name` (a limit not created yet is skipped
    with a warning: `prefect gcl create <name> --limit <GPUs or servers>`)."""
    if not name:
        yield
        return
    with concurrency(name, occupy=1, strict=False):
        yield


@task(cache_policy=UnitMarkerPolicy(), persist_result=True)
def run_unit_task(catalog: Catalog, unit: Unit, run_unit: Callable[..., dict], force: bool = False,
                  hooks: Mapping[str, Callable[..., Any]] | None = None, slot: str | None = None) -> dict:
    """Run one unit through its stage's `run_unit(catalog, unit, **hooks)` under its marker (and, when
    `slot` names a concurrency limit, one slot of it)."""

    def work(u: Unit) -> dict:
        with gpu_slot(slot):
            return on_node(run_unit(catalog, u, **(hooks or {})))

    result = run_unit_with_marker(unit, work, force=force)
    best_effort("run log", log_unit_result, unit, result)
    if result["status"] == "skipped":  # the UI shows it as skipped, not as work done
        return Completed(name="Skipped", message=f"{unit.id}: marker matches, nothing to do", data=result)
    return result


def log_unit_result(unit: Unit, result: dict) -> None:
    """`<stage> <unit>: done|skipped, <headline>`: the figure an operator looks for, in the log and the UI."""
    figures = headline(result)
    get_run_logger().info("%s %s: %s%s", unit.stage, unit.id, result.get("status"), f", {figures}" if figures else "")


def on_node(stats: dict) -> dict:
    """A unit's stats, with the Ray node that ran it (orchestration.runner: ray; local: unchanged)."""
    node = ray_node_id()
    return {**stats, "node": node} if node else stats


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def map_units(
    stage: RunsUnits,
    catalog: Catalog,
    label: str,
    units: Sequence[Unit],
    *,
    force: bool = False,
    retries: int = 0,
    parallel: int = 1,
    hooks: Mapping[str, Callable[..., Any]] | None = None,
    on_result: Callable[[Unit, dict], None] | None = None,
    slot: str | None = None,
) -> list[dict]:
    """Run `units` as tasks of `stage.run_unit`, at most `parallel` at a time, with a progress artifact.

    `hooks` go to every `run_unit` call as keyword arguments (callbacks such as `on_progress`);
    `on_result(unit, result)` runs here, in the flow, as each unit finishes. A unit that fails (after
    its retries) is recorded with its error while the others finish; the stage then fails with a
    `StageError` naming every failed unit.
    """
    logger = get_run_logger()
    if not units:
        logger.info("%s: no units", label)
        return []
    where = unit_runner(catalog, units[0].stage)  # this process, or a Ray cluster (orchestration.runner)
    # quoted locally: Prefect passes them through as they are instead of walking them for futures
    # (prefect-ray would hand the quote itself to the task, so it gets them plain)
    wrap = quote if where.local else (lambda x: x)
    unit_task = run_unit_task.with_options(
        task_run_name=f"{label}:{{unit.id}}",
        retries=retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=2) if retries else 0,
        retry_jitter_factor=0.5 if retries else None,
        refresh_cache=True if force else None,
    )
    progress = best_effort("progress artifact", create_progress_artifact, 0.0,
                           key=artifact_key(catalog.name, label, "progress"), description=f"{label}: units finished")
    meter = terminal.open_meter(label, "units", len(units))
    rows = [u.params.get("rows") for u in units]  # rows per unit, where the plan knows them (download)
    samples = terminal.open_meter(label, "rows", sum(rows), plain_every_s=terminal.PLAIN_EVERY_S) \
        if all(isinstance(r, int) for r in rows) else None
    pending = list(units)
    running: dict[PrefectFuture, Unit] = {}
    results: list[dict] = []
    rows_done = 0
    try:
        while pending or running:
            while pending and len(running) < where.in_flight(parallel, len(units)):
                unit = pending.pop(0)
                running[where.submit(unit_task, catalog=wrap(catalog), unit=unit, run_unit=stage.run_unit,
                                     force=force, hooks=wrap(hooks), slot=slot)] = unit
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
            if on_result is not None and results[-1]["status"] != "failed":
                best_effort(f"{label} progress", on_result, unit, results[-1])
            report_progress(progress, 100.0 * len(results) / len(units))
            counts = unit_counts(results)
            meter.update(len(results), ", ".join(f"{counts[k]} {k}" for k in ("skipped", "failed") if counts[k]))
            if samples is not None and results[-1]["status"] != "failed":
                rows_done += unit.params["rows"]
                samples.update(rows_done)
    finally:  # every meter of the stage, also those its units opened (steps, images)
        terminal.close_stage(label)
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        details = "; ".join(f"{r['unit']}: {r['error']}" for r in failed)
        raise StageError(f"{label}: {len(failed)} of {len(units)} units failed — {details}")
    return results


def publish_table(catalog: Catalog, stage: str, rows: list[dict], description: str,
                  outputs: Path | str | None = None, key: str | None = None) -> None:
    """A table artifact (best effort); `outputs` (default: `RunDir.outputs`) is named in it."""
    if rows:
        where = outputs or catalog.run.outputs(stage)
        best_effort(f"{stage} table artifact", create_table_artifact, rows,
                    key=key or artifact_key(catalog.name, stage), description=f"{description}; outputs: {where}")


def publish_markdown(catalog: Catalog, key: str, markdown: str, description: str) -> None:
    best_effort(f"{key} artifact", create_markdown_artifact, markdown, key=artifact_key(catalog.name, key),
                description=description)


def failures_markdown(report: dict) -> str:
    """The failures artifact: reason, count, share, then up to 5 example rows per reason."""
    stage = report["stage"]
    lines = [f"# {stage}: failures", "",
             f"{report['failed']} of {report['rows']} rows failed ({report['share']:.1%}).", "",
             "| reason | count | share |", "|---|---:|---:|"]
    for r in report["reasons"]:
        share = "filtered by the source" if r.get("filter") else f"{r['share']:.1%}"
        lines.append(f"| {r['reason']} | {r['count']} | {share} |")
    for r in report["reasons"]:
        if r["examples"]:
            cols = list(r["examples"][0])
            lines += ["", f"## {r['reason']}: examples", "", "| " + " | ".join(cols) + " |",
                      "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(_cell(e[c]) for c in cols) + " |" for e in r["examples"]]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")[:200]


def check_failures(catalog: Catalog, report: dict, max_rate: float, results: list[dict]) -> State | list[dict]:
    """Publish the stage's failures artifact; above `max_rate` the stage fails (naming the share and the
    threshold), with some failures it completes as `Completed (with failures)` and a warning in its log."""
    stage = report["stage"]
    if report["failed"] or any(r.get("filter") for r in report["reasons"]):
        publish_markdown(catalog, f"{stage}-failures", failures_markdown(report),
                         f"{stage}: failed rows by reason, with examples")
    if not report["failed"]:
        return results
    top = ", ".join(f"{r['reason']} {r['count']}" for r in report["reasons"] if not r.get("filter"))
    summary = (f"{stage}: {report['failed']} of {report['rows']} rows failed ({report['share']:.1%}; {top})")
    if report["share"] > max_rate:
        raise StageError(f"{summary}, above {stage}.max_failure_rate={max_rate:g}: see the {stage} failures "
                         f"artifact or the {report['view']} view; raise the threshold in the catalog to accept it")
    run_logger().warning("%s, within %s.max_failure_rate=%g", summary, stage, max_rate)
    return Completed(name="Completed with failures", message=summary, data=results)


def unit_counts(results: list[dict]) -> dict[str, int]:
    counts = {"done": 0, "skipped": 0, "failed": 0}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return counts


INLINE_PNG_LIMIT = 1 << 20  # larger figures are linked, not embedded


def png_markdown(title: str, png: Path, heading: str = "#") -> str:
    """A markdown section showing the figure `png` inline (base64), or a link to it when large."""
    if not png.exists():
        return f"{heading} {title}\n\nnot drawn yet ({png})\n"
    data = png.read_bytes()
    if len(data) > INLINE_PNG_LIMIT:
        return f"{heading} {title}\n\n[{png}]({png.resolve().as_uri()})\n"
    return f"{heading} {title}\n\n![{title}](data:image/png;base64,{base64.b64encode(data).decode()})\n\n`{png}`\n"
