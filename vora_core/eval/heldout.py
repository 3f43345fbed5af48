"""The demo's held-out benchmark, built from the synthetic shapes source's held-out split.

The held-out images (`<workdir>/sources/<source>/heldout/*.png`, never downloaded, never trained on)
come with their ground-truth labels in `heldout/labels.parquet` (shape, colour, background, position,
size ...). From them, three benchmarks in the LLaVA-1.5 formats:

* `<source>-heldout-mc`     per image: the shape's colour and the shape, 4 lettered options each.
* `<source>-heldout-yesno`  per image: "Is there a <colour> <shape> in the image?" once true and once
                            false (the false one changes the colour on even images, the shape on odd
                            ones: POPE-like categories `colour` and `shape`), so yes and no are balanced.
* `<source>-heldout-short`  per image: the shape's colour, the shape, where it is and the background's
                            colour, answered in words (normalised exact match).

Distractors and option order are drawn from a generator seeded by (seed, row id, question), so the
benchmark is the same on every run and machine.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from vora_core.data.questions import KINDS, question_samples
from vora_core.errors import DataError
from vora_core.eval.loaders import Benchmark

_COLUMNS = ("row_id", "file", "shape", "colour", "background", "position")


def labels_path(source_dir: Path) -> Path:
    return source_dir / "heldout" / "labels.parquet"


def benchmark_names(source: str) -> list[str]:
    return [f"{source}-heldout-{kind}" for kind in KINDS]


def read_labels(path: Path) -> list[dict]:
    if not path.exists():
        raise DataError(f"held-out labels {path} not found; run the download stage for this source first")
    table = pq.read_table(path)
    missing = [c for c in _COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: no column(s) {', '.join(missing)}; it is not a synthetic shapes label table")
    return table.select(list(_COLUMNS)).to_pylist()


def build_heldout(source: str, source_dir: Path, kind: str, seed: int = 0) -> Benchmark:
    """One of the held-out benchmarks (`kind` in KINDS) of a synthetic shapes source."""
    # The file's name under this source's heldout/ folder: survives a moved run directory.
    rows = read_labels(labels_path(source_dir))
    samples = question_samples(rows, lambda row: str(source_dir / "heldout" / Path(row["file"]).name), kind, seed)
    fmt = "short" if kind == "short" else kind
    return Benchmark(f"{source}-heldout-{kind}", fmt, samples)


