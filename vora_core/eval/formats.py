"""Benchmark formats: what a sample holds, the prompt it becomes, and how a benchmark is scored.

Formats (LLaVA-1.5 protocol):

* `mc`     question + lettered options, answer = letter; suffix MC_SUFFIX; accuracy (per category,
           and CircularEval accuracy when samples carry a `group`: a question counts only if every
           rotation of its options is answered right).
* `yesno`  POPE: yes/no question; suffix SHORT_SUFFIX; accuracy, precision, recall, F1, yes-ratio
           (per category, e.g. random / popular / adversarial, and over all).
* `vqa`    open question with (normally ten) human answers; suffix SHORT_SUFFIX; VQAv2 soft accuracy.
* `short`  open question with one or a few accepted answers; suffix SHORT_SUFFIX; normalised exact match.
* `mme`    MME yes/no question; suffix SHORT_SUFFIX; acc + acc+ per subtask, perception / cognition sums.

Every score dict has `main` (the headline metric's name) and `value` (its value) for summaries.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vora_core.eval import scoring

FORMATS = ("mc", "yesno", "vqa", "short", "mme")
MC_SUFFIX = "Answer with the option's letter from the given choices directly."
SHORT_SUFFIX = "Answer the question using a single word or phrase."
IMAGE = "<image>"

# An image is a file path or the encoded bytes of an image file (MMBench ships base64 in its tsv).
ImageRef = str | bytes


@dataclass
class Sample:
    """One benchmark question. `answer`: mc → letter; yesno/mme → "yes"/"no"; vqa → list of human
    answers; short → an answer or a list of accepted answers. `meta` keeps what scoring groups by
    (`category`, MME `subtask` and `image`, CircularEval `group`) and anything worth keeping in the
    predictions file."""

    id: str
    format: str
    question: str
    images: list[ImageRef]
    answer: str | list[str]
    options: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"sample {self.id}: unknown format {self.format!r}; formats are {FORMATS}")
        if self.format == "mc" and not self.options:
            raise ValueError(f"sample {self.id}: a multiple-choice sample needs options")


def prompt_text(sample: Sample) -> str:
    """The user turn: one `<image>` line per image, the question, options, and the format's suffix."""
    parts = [IMAGE] * len(sample.images)
    if sample.format == "mc":
        options = "\n".join(f"{scoring.LETTERS[i]}. {opt}" for i, opt in enumerate(sample.options or []))
        parts += [sample.question, options, MC_SUFFIX]
    else:
        parts += [sample.question, SHORT_SUFFIX]
    return "\n".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------- scoring


def judge(sample: Sample, prediction: str) -> dict[str, Any]:
    """Per-sample verdict kept in predictions.jsonl: the parsed answer and its score (0..1)."""
    fmt = sample.format
    if fmt == "mc":
        parsed = scoring.parse_choice(prediction, sample.options or [])
        return {"parsed": parsed, "score": float(parsed == sample.answer)}
    if fmt == "yesno":
        parsed = scoring.pope_answer(prediction)
        return {"parsed": parsed, "score": float(parsed == str(sample.answer).lower())}
    if fmt == "mme":
        parsed = scoring.mme_answer(prediction)
        return {"parsed": parsed, "score": float(parsed == str(sample.answer).lower())}
    if fmt == "vqa":
        return {"parsed": scoring.normalize_answer(prediction),
                "score": scoring.vqa_accuracy(prediction, list(sample.answer))}
    parsed = scoring.normalize_answer(prediction)
    return {"parsed": parsed, "score": float(scoring.exact_match(prediction, sample.answer))}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _by_category(samples: Sequence[Sample], values: Sequence[float]) -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for s, v in zip(samples, values, strict=True):
        if "category" in s.meta:
            groups[str(s.meta["category"])].append(v)
    return {k: _mean(v) for k, v in sorted(groups.items())}


def score_benchmark(fmt: str, samples: Sequence[Sample], verdicts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate per-sample verdicts (from `judge`) into the benchmark's scores."""
    if len(samples) != len(verdicts):
        raise ValueError(f"{len(verdicts)} verdicts for {len(samples)} samples")
    values = [float(v["score"]) for v in verdicts]
    if fmt == "mme":
        scores = scoring.mme_scores(
            (s.meta["subtask"], s.meta["image"], v["parsed"], str(s.answer)) for s, v in zip(samples, verdicts, strict=True)
        )
        return {"main": "total", "value": scores["total"], "n": len(samples), **scores}
    if fmt == "yesno":
        parsed = [v["parsed"] for v in verdicts]
        labels = [str(s.answer) for s in samples]
        overall = scoring.pope_metrics(parsed, labels)
        cats: dict[str, list[int]] = defaultdict(list)
        for i, s in enumerate(samples):
            if "category" in s.meta:
                cats[str(s.meta["category"])].append(i)
        by_cat = {c: scoring.pope_metrics([parsed[i] for i in idx], [labels[i] for i in idx])
                  for c, idx in sorted(cats.items())}
        # POPE's headline is F1 averaged over its three categories; without categories, overall F1.
        f1 = _mean([m["f1"] for m in by_cat.values()]) if by_cat else overall["f1"]
        return {"main": "f1", "value": f1, **overall, "f1_overall": overall["f1"], "by_category": by_cat}
    scores: dict[str, Any] = {"main": "accuracy", "value": _mean(values), "accuracy": _mean(values),
                              "n": len(samples), "by_category": _by_category(samples, values)}
    if fmt == "mc":
        scores["unparsed"] = sum(v["parsed"] is None for v in verdicts)
        groups: dict[str, list[float]] = defaultdict(list)
        for s, v in zip(samples, values, strict=True):
            if "group" in s.meta:
                groups[str(s.meta["group"])].append(v)
        if groups:
            circular = _mean([float(all(v == 1.0 for v in vs)) for vs in groups.values()])
            scores.update(main="circular_accuracy", value=circular, circular_accuracy=circular,
                          questions=len(groups))
    return scores
