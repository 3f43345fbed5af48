"""The pipeline's stages: one module per stage, and the one registry of them in pipeline order.

Every stage has the same contract (`Stage`): `plan(catalog)` lists its resumable units (cheap, no side
effects), `run_unit(catalog, unit, **hooks)` does one unit's work and returns its stats (the caller
wraps it in `workdir.run_unit_with_marker`), `summary(catalog)` gives one row per source or unit for
`vora status` and the artifacts. Optional: `failure_report(catalog)` (failed rows by reason) and
`finish(catalog)` (after every unit ran). Orchestration (flows/) passes hooks such as `on_progress` to
`run_unit` as callbacks; units carry paths and settings only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from vora_core.catalog import Catalog
from vora_core.errors import CatalogError
from vora_core.stages import download, evaluate, merge, mix, recaption, train
from vora_core.workdir import Unit, run_unit_with_marker


class Stage(Protocol):
    """The stage contract: a stage module (or, for pretrain / finetune, a `train.TrainStage`)."""

    def plan(self, catalog: Catalog) -> list[Unit]: ...

    def run_unit(self, catalog: Catalog, unit: Unit, /) -> dict: ...

    def summary(self, catalog: Catalog) -> list[dict]: ...


# The registry: stage name -> its stage, in pipeline order.
STAGES: dict[str, Stage] = {
    "download": download,
    "recaption": recaption,
    "mix": mix,
    "pretrain": train.pretrain,
    "merge": merge,
    "finetune": train.finetune,
    "evaluate": evaluate,
}
NAMES: tuple[str, ...] = tuple(STAGES)


def check_stage(name: str) -> str:
    if name not in STAGES:
        raise CatalogError(f"unknown stage {name!r}; stages are: {', '.join(STAGES)}")
    return name


def select_stages(
    available: Iterable[str],
    only: Iterable[str] | None = None,
    from_: str | None = None,
    until: str | None = None,
) -> list[str]:
    """The stages to run, in pipeline order. `only` excludes `from_`/`until`."""
    available = [check_stage(s) for s in available]
    only = [check_stage(s) for s in (only or [])]
    if only and (from_ or until):
        raise CatalogError("use either --only or --from/--until, not both")
    if only:
        missing = [s for s in only if s not in available]
        if missing:
            raise CatalogError(f"stage(s) {', '.join(missing)} not available in this build")
        return [s for s in available if s in only]
    order = list(STAGES)
    lo = order.index(check_stage(from_)) if from_ else 0
    hi = order.index(check_stage(until)) if until else len(order) - 1
    if lo > hi:
        raise CatalogError(f"--from {from_} comes after --until {until}")
    return [s for s in available if lo <= order.index(s) <= hi]


def status(catalog: Catalog) -> dict[str, list[dict]]:
    """Every stage's summary rows (`vora status`, `--json`), in pipeline order."""
    return {name: stage.summary(catalog) for name, stage in STAGES.items()}


def run_stage(name: str, catalog: Catalog, force: bool = False, **hooks: Any) -> list[dict]:
    """A stage without Prefect: every unit in order under its marker (what a flow's tasks do), then
    its `finish`. A download runs its prepare units first; a mix its text units before its mixtures."""
    stage = STAGES[check_stage(name)]

    def run(units: list[Unit]) -> list[dict]:
        return [run_unit_with_marker(unit, lambda u: stage.run_unit(catalog, u, **hooks), force=force)
                for unit in units]

    results: list[dict] = []
    if name == "download":  # the partitions exist once the sources are prepared
        results += run(download.prepare_units(catalog))
    if name == "mix":  # planned again after the text units: a mixture's inputs include their outputs
        results += run([u for u in mix.plan(catalog) if u.params["kind"] == "text"])
        results += run([u for u in mix.plan(catalog) if u.params["kind"] == "mixture"])
    else:
        results += run(stage.plan(catalog))
    finish = getattr(stage, "finish", None)
    if finish is not None:
        finish(catalog)
    return results
