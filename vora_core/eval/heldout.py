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

import random
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

from vora_core.data.sources import BACKGROUNDS, COLOURS, POSITIONS, SHAPES
from vora_core.errors import DataError
from vora_core.eval.formats import Sample
from vora_core.eval.loaders import Benchmark
from vora_core.eval.scoring import LETTERS

KINDS = ("mc", "yesno", "short")
QUESTIONS = {
    "colour": "What colour is the shape?",
    "shape": "What shape is shown in the image?",
    "presence": "Is there a {colour} {shape} in the image?",
    "position": "Where is the shape in the image?",
    "background": "What colour is the background?",
}
_COLUMNS = ("row_id", "file", "shape", "colour", "background", "position")


def labels_path(source_dir: Path) -> Path:
    return source_dir / "heldout" / "labels.parquet"


def benchmark_names(source: str) -> list[str]:
    return [f"{source}-heldout-{kind}" for kind in KINDS]


def _options(rng: random.Random, correct: str, vocabulary: list[str], n: int = 4) -> tuple[list[str], str]:
    others = rng.sample([v for v in vocabulary if v != correct], min(n - 1, len(vocabulary) - 1))
    options = [correct, *others]
    rng.shuffle(options)
    return options, LETTERS[options.index(correct)]


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


def question_samples(rows: list[dict], image_of: Callable[[dict], str], kind: str, seed: int = 0) -> list[Sample]:
    """The questions of `kind` about labelled shapes images (`rows`: label rows; `image_of(row)`: its image).
    The held-out benchmarks and the mix stage's `shapes_vqa` training data both come from here, so the
    training prompts are the evaluation prompts."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    samples: list[Sample] = []
    colours, shapes = list(COLOURS), list(SHAPES)
    for i, row in enumerate(rows):
        rid, image = row["row_id"], [image_of(row)]

        def rng(question: str, rid: str = rid) -> random.Random:
            return random.Random(f"{seed}/{rid}/{question}")

        if kind == "mc":
            for what, vocab in (("colour", colours), ("shape", shapes)):
                options, letter = _options(rng(what), row[what], vocab)
                samples.append(Sample(f"{rid}/{what}", "mc", QUESTIONS[what], image, letter, options=options,
                                      meta={"category": what}))
        elif kind == "yesno":
            category = "colour" if i % 2 == 0 else "shape"
            wrong = dict(row)
            vocab = colours if category == "colour" else shapes
            wrong[category] = rng("presence").choice([v for v in vocab if v != row[category]])
            for label, r in (("yes", row), ("no", wrong)):
                question = QUESTIONS["presence"].format(colour=r["colour"], shape=r["shape"])
                samples.append(Sample(f"{rid}/presence-{label}", "yesno", question, image, label,
                                      meta={"category": category}))
        else:
            for what in ("colour", "shape", "position", "background"):
                samples.append(Sample(f"{rid}/{what}", "short", QUESTIONS[what], image, row[what],
                                      meta={"category": what}))
    return samples


# The vocabularies the questions draw from (exported for the docs and the mix stage's templates).
VOCABULARY = {"colour": list(COLOURS), "shape": list(SHAPES), "position": list(POSITIONS),
              "background": list(BACKGROUNDS)}
