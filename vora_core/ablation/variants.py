"""The ablation grid: model variants (the paper's Table 2 by default, or a variants file) and the
per-variant catalog each one runs under.

A variant changes model settings only. Its catalog is the run's catalog with those settings and
`stages_dir: <workdir>/ablations/<variant>`, so the stage code writes pretrain/, merged/, finetune/
and eval/ there while every variant reads the same mixtures, tiny models and held-out labels — and,
with the same seed, mixture and sequence settings, trains on the same data in the same order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from vora_core.catalog import Catalog, Strict, parse_catalog
from vora_core.errors import CatalogError
from vora_core.workdir import atomic_write_text

VARIANT_STAGES = ("pretrain", "merge", "finetune", "evaluate")
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"


class Variant(Strict):
    """Model settings one variant overrides (unset: the catalog's)."""

    label: str | None = Field(None, description="what the variant is, for tables and plots")
    vision_attention: Literal["bidirectional", "causal"] | None = None
    distill: Literal["blockwise", "last", "none"] | None = None
    distill_weight: float | None = Field(None, ge=0)
    lora_rank: int | None = Field(None, gt=0, description="absolute rank")
    lora_rank_factor: float | None = Field(None, gt=0, description="the catalog's rank × this (the paper's r/2: 0.5)")
    lora_layers: int | None = Field(None, gt=0)
    full_llm: bool = Field(False, description="no LoRA: pretraining trains every LLM weight (lora_rank 0)")
    pretrain_lr: float | None = Field(None, gt=0, description="pretraining learning rate (the paper's full-LLM run "
                                      "trained only with a lower one)")

    @model_validator(mode="after")
    def _one_rank(self) -> Variant:
        given = [k for k in ("lora_rank", "lora_rank_factor") if getattr(self, k) is not None]
        if len(given) == 2 or (given and self.full_llm):
            raise ValueError("give one of lora_rank, lora_rank_factor and full_llm")
        return self

    def model_overrides(self, rank: int) -> dict[str, Any]:
        keys = ("vision_attention", "distill", "distill_weight", "lora_layers")
        out = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        if self.full_llm:
            out["lora_rank"] = 0
        elif self.lora_rank is not None:
            out["lora_rank"] = self.lora_rank
        elif self.lora_rank_factor is not None:
            out["lora_rank"] = max(1, round(rank * self.lora_rank_factor))
        return out


class Grid(Strict):
    """A variants file: the variants (in table order), the baseline of the efficiency figure, and
    optionally the loss thresholds and the smoothing window of the curves."""

    variants: dict[str, Variant] = Field(min_length=1)
    baseline: str = Field("vanilla", description="the variant the efficiency figure is relative to")
    thresholds: list[float] | None = Field(None, min_length=1,
                                           description="LM-loss targets; default: from the baseline's curve")
    smooth: int | None = Field(None, gt=0, description="moving-average window (steps); default: 1/20 of the run")
    # The same for every variant (a fair comparison): a grid can be cheaper than the catalog's run.
    pretrain_steps: int | None = Field(None, gt=0, description="pretraining steps per variant; default: the catalog's")
    finetune_epochs: float | None = Field(None, gt=0,
                                         description="finetuning epochs per variant; default: the catalog's")

    @model_validator(mode="after")
    def _names(self) -> Grid:
        import re

        bad = [n for n in self.variants if not re.match(NAME_PATTERN, n)]
        if bad:
            raise ValueError(f"variant name(s) {', '.join(map(repr, bad))}: use lowercase letters, digits and '-'")
        if self.baseline not in self.variants:
            raise ValueError(f"baseline {self.baseline!r} is not one of the variants ({', '.join(self.variants)})")
        return self


# The paper's full-parameter variant (§5.2: unstable at the LoRA learning rate), added by `--full-llm`.
FULL_LLM = "full-llm"
FULL_LLM_VARIANT = Variant(label="bidirectional, block-wise, no LoRA: every LLM weight trains",
                           vision_attention="bidirectional", distill="blockwise", full_llm=True)

# The paper's Table 2 (§5.2), r = the catalog's model.lora_rank.
PAPER_GRID = Grid(variants={
    "vanilla": Variant(label="causal, no distillation, r", vision_attention="causal", distill="none"),
    "bidir": Variant(label="bidirectional, no distillation, r", vision_attention="bidirectional", distill="none"),
    "causal-blockwise": Variant(label="causal, block-wise, r", vision_attention="causal", distill="blockwise"),
    "bidir-last": Variant(label="bidirectional, last block, r", vision_attention="bidirectional", distill="last"),
    "bidir-blockwise-half": Variant(label="bidirectional, block-wise, r/2", vision_attention="bidirectional",
                                    distill="blockwise", lora_rank_factor=0.5),
    "vora": Variant(label="bidirectional, block-wise, r", vision_attention="bidirectional", distill="blockwise"),
})


def load_grid(path: str | Path | None, full_llm: bool = False) -> Grid:
    """The variants file at `path`, or the paper's grid; `full_llm` adds the full-LLM variant."""
    if full_llm:
        return with_full_llm(load_grid(path))
    if path is None:
        return PAPER_GRID
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"{path}: variants file not found (see ablations/paper.yaml)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise CatalogError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise CatalogError(f"{path}: expected a mapping with `variants:` at the top level")
    try:
        return Grid.model_validate(data)
    except ValidationError as e:
        from vora_core.catalog import _describe

        # A grid-level check has no key to name: its message says what is wrong by itself.
        lines = [_describe(err) if err["loc"] else err["msg"].removeprefix("Value error, ") for err in e.errors()]
        raise CatalogError(f"{path}: invalid variants file:\n  " + "\n  ".join(lines)) from None


def with_full_llm(grid: Grid) -> Grid:
    """The grid plus the full-LLM variant (unless the file already has one by that name)."""
    if FULL_LLM in grid.variants:
        return grid
    return grid.model_copy(update={"variants": {**grid.variants, FULL_LLM: FULL_LLM_VARIANT}})


def check_stages(only: list[str] | None) -> list[str]:
    """The per-variant stages to run, in order (the data stages always run, once, shared)."""
    for stage in only or []:
        if stage not in VARIANT_STAGES:
            raise CatalogError(f"ablate: --only takes {', '.join(VARIANT_STAGES)} (download, recaption and mix "
                               f"run once for every variant), got {stage!r}")
    return [s for s in VARIANT_STAGES if not only or s in only]


def variant_root(catalog: Catalog, name: str) -> Path:
    return catalog.run.root / "ablations" / name


def variant_catalog(catalog: Catalog, name: str, variant: Variant, grid: Grid | None = None) -> Catalog:
    """The run's catalog with the variant's model settings (and the grid's training length) and its own
    stage directory."""
    data = catalog.model_dump(mode="json")
    data["name"] = f"{catalog.name}-{name}"
    data["workdir"] = str(catalog.run.root)
    data["stages_dir"] = str(variant_root(catalog, name))
    data["model"] = {**data["model"], **variant.model_overrides(catalog.model.lora_rank)}
    if variant.pretrain_lr is not None:
        data["pretrain"] = {**data["pretrain"], "lr": variant.pretrain_lr}  # the data order does not depend on it
    if grid is not None and grid.pretrain_steps is not None:
        data["pretrain"] = {**data["pretrain"], "steps": grid.pretrain_steps, "epochs": None}
    if grid is not None and grid.finetune_epochs is not None:
        data["finetune"] = {**data["finetune"], "epochs": grid.finetune_epochs, "steps": None}
    return parse_catalog(data, f"variant {name}")


def write_variant_catalog(catalog: Catalog, name: str, variant: Variant, grid: Grid | None = None) -> Path:
    """`ablations/<variant>/catalog.yaml`: what the variant's stages load (rewritten only on change)."""
    derived = variant_catalog(catalog, name, variant, grid)
    path = variant_root(catalog, name) / "catalog.yaml"
    atomic_write_text(path, yaml.safe_dump(derived.model_dump(mode="json"), sort_keys=False))
    return path
