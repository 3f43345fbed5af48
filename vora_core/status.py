"""`vora status`: per stage and per source, units done / pending, samples, failures by reason."""

from __future__ import annotations

from vora_core.catalog import Catalog
from vora_core.stages import resolve

# Stage → `module:function(catalog) -> list[dict]` (one row per source or unit group).
SUMMARIES: dict[str, str] = {
    "download": "vora_core.data.download:summary",
    "recaption": "vora_core.caption.recaption:summary",
    "mix": "vora_core.mix:summary",
    "pretrain": "vora_core.train.stage:pretrain_summary",
    "merge": "vora_core.merge_stage:summary",
    "finetune": "vora_core.train.stage:finetune_summary",
    "evaluate": "vora_core.eval.runner:summary",
}


def stage_status(catalog: Catalog) -> dict[str, list[dict]]:
    return {stage: resolve(dotted)(catalog) for stage, dotted in SUMMARIES.items()}
