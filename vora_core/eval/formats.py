"""Benchmark formats: what a sample holds, the prompt it becomes, and how a benchmark is scored.

Formats (LLaVA-1.5 prompts):

* `mc`     question + lettered options, answer = letter; suffix MC_SUFFIX; accuracy (per category), or
           CircularEval accuracy when samples carry a `group` (MMBench: a question counts only if all of
           its circular copies are answered right); a lenient reading as a second metric.
* `yesno`  POPE: yes/no question; suffix SHORT_SUFFIX; accuracy, precision, recall, F1, yes-ratio
           (per category, e.g. random / popular / adversarial, and over all).
* `vqa`    open question with (normally ten) human answers; suffix SHORT_SUFFIX; VQA soft accuracy.
* `short`  open question with one or a few accepted answers; suffix SHORT_SUFFIX; normalised exact match.
* `mme`    MME yes/no question; suffix SHORT_SUFFIX; acc + acc+ per subtask, perception / cognition sums.

How answers are read follows each benchmark's reference protocol (PROTOCOLS; a benchmark's loader
names its protocol). Every score dict has `main` (the headline metric's name), `value` (its value) and
`protocol` (name, parsing rule, reference).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from vora_core.data.questions import Sample
from vora_core.eval import scoring


@dataclass(frozen=True)
class Protocol:
    """How a benchmark's answers are read and scored, and the reference it follows (kept in scores.json)."""

    format: str
    parsing: str
    reference: str


PROTOCOLS: dict[str, Protocol] = {
    "llava-sqa": Protocol(
        "mc", "the bare letter, 'X. ' + text, or one 'The answer is X' + a character; anything else wrong",
        "LLaVA-1.5 llava/eval/eval_science_qa.py"),
    "llava-seed": Protocol(
        "mc", "the answer must be the letter itself", "LLaVA-1.5 scripts/convert_seed_for_submission.py"),
    "mmbench": Protocol(
        "mc", "MMBench's matcher (can_infer, no GPT fallback); CircularEval: a question (index mod 1,000,000) "
        "is right only if all its circular copies in the file are right",
        "MMBench / VLMEvalKit vlmeval/utils/matching_util.py and its circular evaluation"),
    "pope": Protocol(
        "yesno", "first sentence; the word No/no/not means no, else yes; F1 averaged over the categories",
        "LLaVA-1.5 llava/eval/eval_pope.py"),
    "mme": Protocol(
        "mme", "'Please answer yes or no.' removed from the question before the short-answer instruction; "
        "yes/no exactly, else in the first four characters; acc + acc+ per subtask; headline perception",
        "MME eval_tool/calculation.py; LLaVA-1.5 scripts/v1_5/eval/mme.sh, lmms-eval tasks/mme"),
    "vqav2": Protocol(
        "vqa", "official VQA normalisation of the prediction; references as written when all agree, else "
        "punctuation-processed; soft accuracy over the 10-choose-9 subsets",
        "GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/vqaEval.py"),
    "textvqa-m4c": Protocol(
        "vqa", "m4c answer processor on prediction and references; soft accuracy over the 10-choose-9 subsets",
        "LLaVA-1.5 llava/eval/m4c_evaluator.py (TextVQAAccuracyEvaluator)"),
    "exact": Protocol(
        "short", "VQA normalisation, then equality with any accepted answer", "this project (held-out demo)"),
}
# Protocol of a benchmark whose layout names none (our jsonl files, the held-out demo benchmarks).
DEFAULT_PROTOCOL = {"mc": "llava-sqa", "yesno": "pope", "mme": "mme", "vqa": "vqav2", "short": "exact"}


def protocol_for(fmt: str, protocol: str | None) -> str:
    """The protocol's name (the format's default when None); a protocol of another format is an error."""
    name = protocol or DEFAULT_PROTOCOL[fmt]
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; protocols are {', '.join(PROTOCOLS)}")
    if PROTOCOLS[name].format != fmt:
        raise ValueError(f"protocol {name!r} scores {PROTOCOLS[name].format!r} questions, not {fmt!r}")
    return name


def protocol_record(fmt: str, protocol: str | None) -> dict[str, str]:
    """What scores.json keeps about the protocol: its name, parsing rule and reference."""
    name = protocol_for(fmt, protocol)
    return {"name": name, **asdict(PROTOCOLS[name])}


# ---------------------------------------------------------------------------------------- scoring


def _parse_mc(protocol: str, text: str, options: list[str]) -> str | None:
    if protocol == "mmbench":
        return scoring.parse_choice_mmbench(text, options)
    if protocol == "llava-seed":
        return scoring.parse_choice_exact(text, len(options))
    return scoring.parse_choice_llava(text, len(options))


def judge(sample: Sample, prediction: str, protocol: str | None = None) -> dict[str, Any]:
    """Per-sample verdict kept in predictions.jsonl: the parsed answer and its score (0..1) under the
    benchmark's protocol; multiple choice adds the lenient reading (`parsed_lenient`, `score_lenient`)."""
    fmt = sample.format
    name = protocol_for(fmt, protocol)
    if fmt == "mc":
        options = list(sample.options or [])
        parsed = _parse_mc(name, prediction, options)
        lenient = scoring.parse_choice_lenient(prediction, options)
        return {"parsed": parsed, "score": float(parsed == sample.answer),
                "parsed_lenient": lenient, "score_lenient": float(lenient == sample.answer)}
    if fmt == "yesno":
        parsed = scoring.pope_answer(prediction)
        return {"parsed": parsed, "score": float(parsed == str(sample.answer).lower())}
    if fmt == "mme":
        parsed = scoring.mme_answer(prediction)
        return {"parsed": parsed, "score": float(parsed == str(sample.answer).lower())}
    if fmt == "vqa":
        if name == "textvqa-m4c":
            return {"parsed": scoring.m4c_normalize(prediction),
                    "score": scoring.textvqa_accuracy(prediction, list(sample.answer))}
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


def _circular(samples: Sequence[Sample], values: Sequence[float]) -> tuple[float, dict[str, float], int]:
    """CircularEval: a question (its samples share `group`) counts only if all of them are right.
    Returns the accuracy over questions, the same per category, and the number of questions."""
    groups: dict[str, list[float]] = defaultdict(list)
    category: dict[str, str] = {}
    for s, v in zip(samples, values, strict=True):
        groups[str(s.meta["group"])].append(v)
        if "category" in s.meta:
            category[str(s.meta["group"])] = str(s.meta["category"])
    right = {g: float(all(v == 1.0 for v in vs)) for g, vs in groups.items()}
    by_cat: dict[str, list[float]] = defaultdict(list)
    for g, ok in right.items():
        if g in category:
            by_cat[category[g]].append(ok)
    return _mean(list(right.values())), {k: _mean(v) for k, v in sorted(by_cat.items())}, len(groups)


def _score_mc(samples: Sequence[Sample], verdicts: Sequence[dict[str, Any]], values: list[float]) -> dict[str, Any]:
    lenient = [float(v.get("score_lenient", v["score"])) for v in verdicts]
    scores: dict[str, Any] = {"n": len(samples), "unparsed": sum(v["parsed"] is None for v in verdicts)}
    if any("group" in s.meta for s in samples):
        if not all("group" in s.meta for s in samples):
            raise ValueError("CircularEval needs a group on every sample")
        circular, by_cat, questions = _circular(samples, values)
        circular_lenient, _, _ = _circular(samples, lenient)
        return scores | {
            "main": "circular_accuracy", "value": circular, "circular_accuracy": circular, "questions": questions,
            "by_category": by_cat, "row_accuracy": _mean(values),
            "circular_accuracy_lenient": circular_lenient, "row_accuracy_lenient": _mean(lenient),
        }
    return scores | {"main": "accuracy", "value": _mean(values), "accuracy": _mean(values),
                     "by_category": _by_category(samples, values), "accuracy_lenient": _mean(lenient)}


def score_benchmark(fmt: str, samples: Sequence[Sample], verdicts: Sequence[dict[str, Any]],
                    protocol: str | None = None) -> dict[str, Any]:
    """Aggregate per-sample verdicts (from `judge`) into the benchmark's scores; `protocol` (name,
    parsing rule, reference) is recorded with them."""
    if len(samples) != len(verdicts):
        raise ValueError(f"{len(verdicts)} verdicts for {len(samples)} samples")
    recorded = {"protocol": protocol_record(fmt, protocol)}
    values = [float(v["score"]) for v in verdicts]
    if fmt == "mc":
        return _score_mc(samples, verdicts, values) | recorded
    if fmt == "mme":
        scores = scoring.mme_scores(
            (s.meta["subtask"], s.meta["image"], v["parsed"], str(s.answer))
            for s, v in zip(samples, verdicts, strict=True)
        )
        # The paper's MME figure is the perception score; cognition is reported beside it.
        return {"main": "perception", "value": scores["perception"], "n": len(samples), **scores} | recorded
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
        return {"main": "f1", "value": f1, **overall, "f1_overall": overall["f1"], "by_category": by_cat} | recorded
    return {"main": "accuracy", "value": _mean(values), "accuracy": _mean(values), "n": len(samples),
            "by_category": _by_category(samples, values)} | recorded
