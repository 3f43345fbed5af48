"""Catalogs: what a run uses (sources, models, stage settings), as pydantic models.

Every model forbids unknown keys. `load_catalog` turns validation failures into a `CatalogError`
naming the file, the dotted key path, the bad value and what was expected. Relative paths in a
catalog are resolved against the current working directory (run `vora` from the repository root).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vora_core.errors import CatalogError
from vora_core.workdir import RunDir, atomic_write_text, fingerprint


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# --------------------------------------------------------------------------------------------- sources


class SyntheticShapesSource(Strict):
    """Generated images of coloured shapes with ground-truth alt text and labels (the demo's data)."""

    kind: Literal["synthetic_shapes"]
    n: int = Field(400, gt=0, description="images in the training split")
    heldout: int = Field(100, ge=0, description="extra images kept for evaluation, never downloaded")
    min_side: int = Field(48, ge=8)
    max_side: int = Field(320, ge=8)
    seed: int = 0

    @model_validator(mode="after")
    def _sides(self) -> SyntheticShapesSource:
        if self.min_side > self.max_side:
            raise ValueError(f"min_side ({self.min_side}) must be <= max_side ({self.max_side})")
        return self


class UrlListSource(Strict):
    """A parquet/csv/jsonl file (or glob) of image URLs with optional captions."""

    kind: Literal["url_list"]
    path: str
    format: Literal["parquet", "csv", "jsonl"] | None = Field(None, description="default: from the suffix")
    url_col: str = "url"
    caption_col: str | None = "caption"
    id_col: str | None = Field(None, description="a unique id per row; default: the row number")


class DataCompSource(Strict):
    """DataComp metadata parquets (uid, url, text, original_width, original_height, sha256, ...)."""

    kind: Literal["datacomp"]
    path: str = Field(description="a parquet file, directory or glob of DataComp metadata")
    min_longer_edge: int = Field(448, ge=0, description="keep rows whose longer side is > this (pixels)")
    verify_sha256: bool = False
    limit: int | None = Field(None, gt=0)


class GLDv2Source(Strict):
    """Google Landmarks v2: train.csv (id, url, landmark_id) and optional helpers."""

    kind: Literal["gldv2"]
    train_csv: str
    clean_csv: str | None = Field(None, description="train_clean.csv: keep only its images")
    label_to_category_csv: str | None = Field(None, description="train_label_to_category.csv for alt text")
    limit: int | None = Field(None, gt=0)


class ParquetImagesSource(Strict):
    """Parquet files that already hold image bytes (+ captions/conversations): no network."""

    kind: Literal["parquet_images"]
    path: str
    id_col: str = "id"
    image_col: str = Field("image", description="binary column, or struct with a `bytes` field, or a list")
    caption_col: str | None = None
    conversations_col: str | None = "conversations"


Source = Annotated[
    SyntheticShapesSource | UrlListSource | DataCompSource | GLDv2Source | ParquetImagesSource,
    Field(discriminator="kind"),
]

# ------------------------------------------------------------------------------------------- download


class DownloadSettings(Strict):
    """img2dataset settings (its own names where they exist)."""

    image_size: int = Field(448, gt=0)
    resize_mode: Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"] = "keep_ratio_largest"
    resize_only_if_bigger: bool = True
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = Field(95, ge=1, le=100)
    min_image_size: int = Field(0, ge=0, description="img2dataset's check: the *shorter* side")
    max_aspect_ratio: float | None = Field(None, gt=0)
    max_image_area: int = Field(89_478_485, gt=0, description="decompression-bomb guard (pixels)")
    retries: int = Field(2, ge=0)
    timeout: int = Field(10, gt=0, description="seconds per request")
    processes_count: int = Field(2, gt=0)
    thread_count: int = Field(16, gt=0)
    number_sample_per_shard: int = Field(1000, gt=0)
    rows_per_unit: int = Field(10_000, gt=0, description="url rows per unit (one img2dataset call)")
    distributor: Literal["multiprocessing", "pyspark", "ray"] = "multiprocessing"
    unit_timeout_s: float = Field(3600, gt=0, description="hard limit for one unit's img2dataset child")
    parallel_units: int = Field(1, gt=0, description="units downloading at once (each has its own pool)")
    unit_retries: int = Field(2, ge=0, description="Prefect retries (with backoff) of a failed unit")
    user_agent_token: str | None = None
    disallowed_header_directives: list[str] = Field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"]
    )

    @model_validator(mode="after")
    def _shards_per_unit(self) -> DownloadSettings:
        if self.rows_per_unit % self.number_sample_per_shard:
            raise ValueError(
                f"rows_per_unit ({self.rows_per_unit}) must be a multiple of number_sample_per_shard "
                f"({self.number_sample_per_shard}) so shard numbers are stable across units"
            )
        return self


# -------------------------------------------------------------------------------------------- catalog


class Catalog(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    workdir: str = Field(description="the run directory; relative paths are against the working directory")
    seed: int = 0
    sources: dict[str, Source] = Field(min_length=1)
    download: DownloadSettings = Field(default_factory=DownloadSettings)
    # -- later stages add their sections below this line (one field each, with defaults) --

    @model_validator(mode="after")
    def _source_names(self) -> Catalog:
        for name in self.sources:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"source name {name!r} may hold only letters, digits, '_' and '-'")
        return self

    @property
    def run(self) -> RunDir:
        return RunDir(self.workdir)

    def settings_fingerprint(self, *parts: Any) -> str:
        """Fingerprint of the given settings (pydantic models are dumped to JSON first)."""
        return fingerprint(*[p.model_dump(mode="json") if isinstance(p, BaseModel) else p for p in parts])

    def write_lock(self) -> Path:
        """Write the resolved catalog (all defaults filled in) to `<workdir>/catalog.lock.yaml`."""
        self.run.ensure()
        text = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
        lock = self.run.lock_file
        if lock.exists() and lock.read_text() == text:
            return lock  # unchanged: a rerun rewrites nothing
        return atomic_write_text(lock, text)


# ----------------------------------------------------------------------------------- loading & errors


def _describe(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{loc}: unknown key (remove it or check its spelling)"
    if kind == "missing":
        return f"{loc}: required key is missing"
    if kind == "union_tag_invalid":
        expected = err.get("ctx", {}).get("expected_tags", "")
        return f"{loc}: unknown kind {err['input'].get('kind')!r}; expected one of {expected}"
    if kind == "union_tag_not_found":
        return f"{loc}: needs a `kind` key"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg} (got {err['input']!r})"


def _clean_loc(err: dict[str, Any], data: Any) -> dict[str, Any]:
    # pydantic puts the union tag into the location (sources.x.url_list.path): drop it.
    loc, node, clean = list(err["loc"]), data, []
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
            clean.append(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
            clean.append(part)
        elif isinstance(node, dict) and node.get("kind") == part:
            continue
        else:
            clean.append(part)
    return {**err, "loc": tuple(clean)}


def parse_catalog(data: Any, source: str = "<catalog>") -> Catalog:
    if not isinstance(data, dict):
        raise CatalogError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Catalog.model_validate(data)
    except ValidationError as e:
        lines = [_describe(_clean_loc(err, data)) for err in e.errors()]
        raise CatalogError(f"{source}: invalid catalog:\n  " + "\n  ".join(lines)) from None


def load_catalog(path: str | Path) -> Catalog:
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"{path}: catalog file not found (see catalogs/ for examples)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise CatalogError(f"{path}: not valid YAML: {e}") from None
    return parse_catalog(data, str(path))
