"""The merge stage: one unit folding the pretrained LoRA into the LLM, proven on a probe batch
(mechanism: vora_core.model.merge_check); also `vora merge` outside a run (`merge_command`)."""

from __future__ import annotations

from pathlib import Path

from vora_core.catalog import Catalog, MergeSettings
from vora_core.model.merge_check import merge_and_check
from vora_core.workdir import Unit, dir_identity, fingerprint, read_marker, run_unit_with_marker

NAME = "merge"
# Settings that change the merged weights or the verdict (device does not).
OUTPUT_SETTINGS = ("dtype", "tolerance", "low_precision_factor", "probe_images", "probe_text", "probe_seed")


def source_dir(catalog: Catalog) -> Path:
    return Path(catalog.merge.source) if catalog.merge.source else catalog.run.stage_dir("pretrain") / "final"


def merge_unit(pretrain_dir: str | Path, out_dir: str | Path, settings: MergeSettings) -> Unit:
    src = Path(pretrain_dir)
    dumped = settings.model_dump(mode="json")
    fp = fingerprint({k: dumped[k] for k in OUTPUT_SETTINGS}, dir_identity(src))
    return Unit(stage=NAME, id="merge", output=str(Path(out_dir)), fingerprint=fp,
                params={"source": str(src), "settings": dumped})


def plan(catalog: Catalog) -> list[Unit]:
    return [merge_unit(source_dir(catalog), catalog.run.stage_dir(NAME), catalog.merge)]


def run_unit(catalog: Catalog, unit: Unit) -> dict:
    return merge_and_check(unit.params["source"], unit.output, MergeSettings(**unit.params["settings"]))


def merge_command(pretrain_dir: str, out_dir: str, settings: MergeSettings | None = None,
                  force: bool = False) -> dict:
    """`vora merge PRETRAIN_DIR OUT_DIR`: the same unit outside a run (marker `<OUT_DIR>.done.json`)."""
    unit = merge_unit(pretrain_dir, out_dir, settings or MergeSettings())
    return run_unit_with_marker(unit, lambda u: merge_and_check(u.params["source"], u.output,
                                                                MergeSettings(**u.params["settings"])), force=force)


def summary(catalog: Catalog) -> list[dict]:
    """One row: done or pending, the measured difference and its bound (for status and artifacts)."""
    rows = []
    for unit in plan(catalog):
        stats = (read_marker(unit.output) or {}).get("stats", {}) if unit.done else {}
        rows.append({"unit": unit.id, "done": bool(stats), "source": unit.params["source"],
                     "output": unit.output, "dtype": unit.params["settings"]["dtype"],
                     "max_abs_logit_diff": stats.get("max_abs_logit_diff"), "bound": stats.get("bound"),
                     "seconds": stats.get("seconds")})
    return rows
