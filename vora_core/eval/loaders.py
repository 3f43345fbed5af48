"""Loaders for local copies of public benchmark files (layouts in docs/benchmarks.md). No downloads.

`load_benchmark(name, layout, path, ...)` returns a `Benchmark`: its samples in a deterministic order
and the questions it could not use, each with a reason (an image file that is missing, a SEED-Bench
video question) — nothing is dropped silently. A missing or malformed benchmark file is a `DataError`
naming the file and the expected layout.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vora_core.data.questions import LETTERS, Sample
from vora_core.errors import DataError

log = logging.getLogger(__name__)

LAYOUTS = ("pope", "mme", "mmbench", "scienceqa", "seedbench", "ai2d", "textvqa", "vqav2", "jsonl")
DOCS = "docs/benchmarks.md"


@dataclass
class Benchmark:
    name: str
    format: str
    samples: list[Sample]
    rejects: list[dict[str, str]] = field(default_factory=list)  # {"id", "reason" (REASONS), "detail"}
    protocol: str | None = None  # formats.PROTOCOLS name; None = the format's default


# Why a question could not be used (the raw text stays beside it as the detail). `filtered_*` questions are
# left out by the benchmark's definition (not failures); the rest point at a wrong layout or missing files.
REASONS = ("missing_image", "bad_image", "bad_answer", "bad_index", "malformed", "filtered_video")


class _Collector:
    """Samples + rejects; an image path that does not exist turns its sample into a reject."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.rejects: list[dict[str, str]] = []

    def add(self, sample: Sample) -> None:
        for image in sample.images:
            if isinstance(image, str) and not Path(image).is_file():
                self.reject(sample.id, "missing_image", f"image not found: {image}")
                return
        self.samples.append(sample)

    def reject(self, sample_id: str, reason: str, detail: str) -> None:
        self.rejects.append({"id": sample_id, "reason": reason, "detail": detail})


def _need(path: Path, what: str, layout: str) -> Path:
    if not path.exists():
        raise DataError(f"{layout}: {what} {path} not found; see {DOCS} for the expected layout")
    return path


def _read_json(path: Path, layout: str) -> Any:
    try:
        return json.loads(_need(path, "file", layout).read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{layout}: {path} is not valid JSON ({e}); see {DOCS}") from None


def _read_jsonl(path: Path, layout: str) -> list[dict]:
    rows = []
    for n, line in enumerate(_need(path, "file", layout).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{layout}: {path} line {n} is not valid JSON ({e})") from None
    return rows


def _field(row: dict, key: str, where: str) -> Any:
    if key not in row:
        raise DataError(f"{where}: no {key!r} field (fields: {', '.join(map(str, row))}); see {DOCS}")
    return row[key]


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value) or str(value).strip() in ("", "nan")


# ------------------------------------------------------------------------------------------- POPE


def load_pope(path: Path, image_dir: Path | None, split: str | None) -> _Collector:
    """`coco_pope_<category>.json` files (one JSON object per line), or one such file."""
    files = sorted(path.glob("coco_pope_*.json")) if path.is_dir() else [_need(path, "file", "pope")]
    if not files:
        raise DataError(f"pope: no coco_pope_*.json file in {path}; see {DOCS}")
    images = image_dir or (path if path.is_dir() else path.parent) / "val2014"
    out = _Collector()
    for file in files:
        category = file.stem.removeprefix("coco_pope_")
        if split and category != split:
            continue
        for row in _read_jsonl(file, "pope"):
            where = f"pope: {file.name}"
            qid = _field(row, "question_id", where)
            label = str(_field(row, "label", where)).strip().lower()
            if label not in ("yes", "no"):
                out.reject(f"{category}-{qid}", "bad_answer", f"label {label!r} is not yes/no")
                continue
            out.add(Sample(f"{category}-{qid}", "yesno", _field(row, "text", where),
                           [str(images / _field(row, "image", where))], label, meta={"category": category}))
    return out


# -------------------------------------------------------------------------------------------- MME

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")


def load_mme(path: Path, image_dir: Path | None, split: str | None) -> _Collector:
    """MME_Benchmark_release_version: one folder per subtask; each image has a `<stem>.txt` of
    `question<TAB>answer` lines (two per image), either beside the image or under
    `questions_answers_YN/` with the images under `images/`."""
    _need(path, "directory", "mme")
    out = _Collector()
    subtasks = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subtasks:
        raise DataError(f"mme: {path} holds no subtask folders; see {DOCS}")
    for task in subtasks:
        if split and task.name != split:
            continue
        qa_dir, img_dir = task, task
        if (task / "questions_answers_YN").is_dir():
            qa_dir, img_dir = task / "questions_answers_YN", task / "images"
        for txt in sorted(qa_dir.glob("*.txt")):
            image = next((img_dir / (txt.stem + s) for s in _IMAGE_SUFFIXES if (img_dir / (txt.stem + s)).exists()),
                         img_dir / (txt.stem + ".png"))
            lines = [ln for ln in txt.read_text(encoding="utf-8").splitlines() if ln.strip()]
            for i, line in enumerate(lines):
                sid = f"{task.name}/{txt.stem}-{i}"
                question, sep, answer = line.rpartition("\t")
                if not sep or answer.strip().lower() not in ("yes", "no"):
                    out.reject(sid, "malformed", f"{txt}: line {i + 1} is not 'question<TAB>Yes|No'")
                    continue
                out.add(Sample(sid, "mme", question.strip(), [str(image)], answer.strip().lower(),
                               meta={"subtask": task.name, "image": f"{task.name}/{image.name}",
                                     "category": task.name}))
    return out


# ---------------------------------------------------------------------------------------- MMBench


# MMBench's circular copies of question q are the rows with index q + k·CIRCULAR_STRIDE (k = 1, 2, ...).
CIRCULAR_STRIDE = 1_000_000


def load_mmbench(path: Path, image_dir: Path | None, split: str | None, circular: bool = True) -> _Collector:
    """MMBench tsv (e.g. mmbench_dev_20230712.tsv): index, question, hint, A..D(..), answer, category,
    image (base64; a bare index refers to another row's image). The file already holds each question's
    circular copies (options shifted) as rows with index + k·1,000,000; every row is asked once as
    written, and `group` (index mod 1,000,000) ties the copies together for CircularEval. Without
    `circular`, only the original rows (index < 1,000,000) are asked."""
    csv.field_size_limit(sys.maxsize)
    with open(_need(path, "file", "mmbench"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows:
        return _Collector()
    for col in ("index", "question", "answer", "image", "A", "B"):
        _field(rows[0], col, f"mmbench: {path}")
    by_index = {r["index"]: r for r in rows}
    out = _Collector()
    for row in rows:
        idx = row["index"]
        if split and "split" in row and row["split"] != split:
            continue
        if not idx.strip().isdigit():
            out.reject(idx, "bad_index", f"index {idx!r} is not a whole number")
            continue
        number = int(idx)
        if not circular and number >= CIRCULAR_STRIDE:
            continue
        options = [row[c] for c in LETTERS if c in row and not _blank(row[c])]
        answer = (row.get("answer") or "").strip()
        if answer not in LETTERS[: len(options)]:
            out.reject(idx, "bad_answer", f"answer {answer!r} is not one of the {len(options)} option letters")
            continue
        raw = row["image"].strip()
        if raw.isdigit() and raw in by_index:  # the image is stored once, on another row
            raw = by_index[raw]["image"].strip()
        try:
            image = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            out.reject(idx, "bad_image", "image is not valid base64")
            continue
        question = row["question"] if _blank(row.get("hint")) else f"{row['hint']}\n{row['question']}"
        meta: dict[str, Any] = {"category": row.get("category", ""), "index": idx}
        if circular:
            meta |= {"group": str(number % CIRCULAR_STRIDE), "copy": number // CIRCULAR_STRIDE}
        out.add(Sample(idx, "mc", question, [image], answer, options=options, meta=meta))
    return out


# -------------------------------------------------------------------------------------- ScienceQA


def load_scienceqa(path: Path, image_dir: Path | None, split: str | None) -> _Collector:
    """ScienceQA: problems.json + pid_splits.json; images at `<image_dir>/<split>/<pid>/image.png`.
    Only problems with an image (ScienceQA-IMG)."""
    split = split or "test"
    problems = _read_json(path / "problems.json", "scienceqa")
    splits = _read_json(path / "pid_splits.json", "scienceqa")
    if split not in splits:
        raise DataError(f"scienceqa: split {split!r} not in {path / 'pid_splits.json'} (has {', '.join(splits)})")
    images = image_dir or path
    out = _Collector()
    for pid in splits[split]:
        p = problems.get(str(pid))
        if p is None:
            out.reject(str(pid), "malformed", "listed in pid_splits.json but not in problems.json")
            continue
        if not p.get("image"):
            continue  # ScienceQA-IMG: text-only problems are not part of the benchmark
        where = f"scienceqa: problem {pid}"
        choices = list(_field(p, "choices", where))
        hint = (p.get("hint") or "").strip()
        question = f"Context: {hint}\n{p['question']}" if hint else _field(p, "question", where)
        out.add(Sample(str(pid), "mc", question, [str(images / split / str(pid) / p["image"])],
                       LETTERS[int(_field(p, "answer", where))], options=choices,
                       meta={"category": p.get("subject", "")}))
    return out


# ------------------------------------------------------------------------------------- SEED-Bench


def load_seedbench(path: Path, image_dir: Path | None, split: str | None) -> _Collector:
    """SEED-Bench.json: {"questions": [...], "question_type": {name: id}}; images in SEED-Bench-image/."""
    data = _read_json(path, "seedbench")
    names = {v: k for k, v in data.get("question_type", {}).items()}
    images = image_dir or path.parent / "SEED-Bench-image"
    out = _Collector()
    for q in _field(data, "questions", f"seedbench: {path}"):
        where = f"seedbench: {path.name}"
        qid = str(_field(q, "question_id", where))
        if q.get("data_type", "image") != "image":
            out.reject(qid, "filtered_video", f"{q.get('data_type')} question (only image questions are evaluated)")
            continue
        options = [q[f"choice_{c}"] for c in "abcd" if f"choice_{c}" in q]
        category = names.get(q.get("question_type_id"), str(q.get("question_type_id", "")))
        out.add(Sample(qid, "mc", _field(q, "question", where), [str(images / _field(q, "data_id", where))],
                       str(_field(q, "answer", where)).strip(), options=options, meta={"category": category}))
    return out


# ------------------------------------------------------------------------------------------- AI2D


def load_ai2d(path: Path, image_dir: Path | None, split: str | None) -> _Collector:
    """AI2D: questions/<image>.json ({"imageName", "questions": {text: {answerTexts, correctAnswer,
    questionId}}}), images/<image>; `split: test` keeps the images listed in ai2d_test_ids.csv."""
    qdir = _need(path / "questions", "directory", "ai2d")
    keep = None
    if split:
        ids_file = _need(path / f"ai2d_{split}_ids.csv", "split file", "ai2d")
        keep = {ln.strip().split(",")[0] for ln in ids_file.read_text().splitlines() if ln.strip()}
    images = image_dir or path / "images"
    out = _Collector()
    for qfile in sorted(qdir.glob("*.json"), key=lambda p: (len(p.stem), p.stem)):
        data = _read_json(qfile, "ai2d")
        image_name = data.get("imageName", qfile.stem)
        if keep is not None and Path(image_name).stem not in keep:
            continue
        for text, q in sorted(data.get("questions", {}).items(), key=lambda kv: kv[1].get("questionId", kv[0])):
            where = f"ai2d: {qfile.name}"
            options = list(_field(q, "answerTexts", where))
            out.add(Sample(str(q.get("questionId", f"{image_name}-{text}")), "mc", text, [str(images / image_name)],
                           LETTERS[int(_field(q, "correctAnswer", where))], options=options,
                           meta={"category": "abc_label" if q.get("abcLabel") else "plain"}))
    return out


# ---------------------------------------------------------------------------------------- TextVQA


def load_textvqa(path: Path, image_dir: Path | None, split: str | None) -> _Collector:
    """TextVQA_0.5.1_val.json ({"data": [{question_id, question, image_id, answers}]}); images are
    `<image_id>.jpg` in train_images/ (the val split's images ship there)."""
    data = _read_json(path, "textvqa")
    images = image_dir or path.parent / "train_images"
    out = _Collector()
    for q in _field(data, "data", f"textvqa: {path}"):
        where = f"textvqa: {path.name}"
        qid = str(_field(q, "question_id", where))
        answers = list(_field(q, "answers", where))
        if not answers:
            out.reject(qid, "bad_answer", "no answers (test split?)")
            continue
        out.add(Sample(qid, "vqa", _field(q, "question", where), [str(images / f"{_field(q, 'image_id', where)}.jpg")],
                       answers))
    return out


# ------------------------------------------------------------------------------------------ VQAv2


def load_vqav2(path: Path, image_dir: Path | None, split: str | None) -> _Collector:
    """VQAv2 val: v2_OpenEnded_mscoco_val2014_questions.json + v2_mscoco_val2014_annotations.json;
    images val2014/COCO_val2014_<image_id:012d>.jpg."""
    split = split or "val2014"
    questions = _read_json(path / f"v2_OpenEnded_mscoco_{split}_questions.json", "vqav2")
    annotations = _read_json(path / f"v2_mscoco_{split}_annotations.json", "vqav2")
    by_qid = {a["question_id"]: a for a in _field(annotations, "annotations", "vqav2: annotations")}
    images = image_dir or path / split
    out = _Collector()
    for q in _field(questions, "questions", "vqav2: questions"):
        qid = q["question_id"]
        ann = by_qid.get(qid)
        if ann is None:
            out.reject(str(qid), "malformed", "no annotation for this question")
            continue
        answers = [a["answer"] for a in ann["answers"]]
        image = images / f"COCO_{split}_{int(q['image_id']):012d}.jpg"
        out.add(Sample(str(qid), "vqa", q["question"], [str(image)], answers,
                       meta={"category": ann.get("answer_type", "")}))
    return out


# ------------------------------------------------------------------------------------------ jsonl


def load_jsonl(path: Path, image_dir: Path | None, split: str | None) -> _Collector:
    """Our own layout: one object per line with id, format, question, image (or images: a list),
    answer (letter / yes|no / list of answers), options (mc), category (optional). Image paths are
    relative to the file's folder (or image_dir)."""
    base = image_dir or path.parent
    out = _Collector()
    for n, row in enumerate(_read_jsonl(path, "jsonl"), 1):
        where = f"jsonl: {path.name} line {n}"
        images = row.get("images", [row["image"]] if row.get("image") else [])
        meta = {k: v for k, v in row.items() if k not in ("id", "format", "question", "image", "images", "answer",
                                                           "options")}
        try:
            sample = Sample(str(_field(row, "id", where)), _field(row, "format", where), _field(row, "question", where),
                            [str(base / i) for i in images], _field(row, "answer", where), row.get("options"), meta)
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None
        out.add(sample)
    return out


# layout → (format, scoring protocol (formats.PROTOCOLS; None = the format's default), loader)
_LOADERS: dict[str, tuple[str, str | None, Callable[..., _Collector]]] = {
    "pope": ("yesno", "pope", load_pope), "mme": ("mme", "mme", load_mme),
    "mmbench": ("mc", "mmbench", load_mmbench), "scienceqa": ("mc", "llava-sqa", load_scienceqa),
    "seedbench": ("mc", "llava-seed", load_seedbench), "ai2d": ("mc", "llava-sqa", load_ai2d),
    "textvqa": ("vqa", "textvqa-m4c", load_textvqa), "vqav2": ("vqa", "vqav2", load_vqav2),
    "jsonl": ("", None, load_jsonl),
}


def load_benchmark(name: str, layout: str, path: str | Path, image_dir: str | Path | None = None,
                   split: str | None = None, limit: int | None = None, circular: bool | None = None) -> Benchmark:
    """Load a benchmark from local files. `limit` keeps the first N samples (smoke runs); `circular`
    (MMBench only, default on) asks the circular copies the file holds and scores by CircularEval."""
    if layout not in _LOADERS:
        raise DataError(f"benchmark {name}: unknown layout {layout!r}; layouts are {', '.join(LAYOUTS)}")
    fmt, protocol, loader = _LOADERS[layout]
    kwargs = {"circular": circular if circular is not None else True} if layout == "mmbench" else {}
    found = loader(Path(path), Path(image_dir) if image_dir else None, split, **kwargs)
    samples = found.samples
    if layout == "jsonl":
        formats = {s.format for s in samples}
        if len(formats) > 1:
            raise DataError(f"benchmark {name}: {path} mixes formats {sorted(formats)}; use one file per format")
        fmt = formats.pop() if formats else "short"
    if limit is not None:
        samples = samples[:limit]
    if found.rejects:
        log.warning("benchmark %s: %d questions not usable (first: %s)", name, len(found.rejects), found.rejects[0])
    return Benchmark(name, fmt, samples, found.rejects, protocol)
