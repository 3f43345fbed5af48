"""Stage names, their order, and selection (`only` / `from` / `until`) for a pipeline run."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

from vora_core.errors import CatalogError
from vora_core.workdir import STAGES


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


def resolve(dotted: str) -> Callable[..., Any]:
    """Import `package.module:attribute`."""
    module, _, attr = dotted.partition(":")
    return getattr(importlib.import_module(module), attr)
