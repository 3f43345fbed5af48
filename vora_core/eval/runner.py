"""The evaluate stage: one unit per benchmark, greedy batched decoding, predictions and scores.

Unit `<bench>` loads the benchmark (loaders / the demo's held-out builder), answers every question
with the model's cached greedy `generate` in batches of `batch_size` (questions sorted by length so
a batch pads little), and writes `eval/<bench>/predictions.jsonl` (one line per question: prompt,
answer, parsed answer, score) and `eval/<bench>/scores.json` into a directory that is renamed into
place; its marker `eval/<bench>.done.json` follows. `write_summary` gathers `eval/summary.json`.
Questions the loader could not use and images that do not decode are counted in `rejected` with
their reasons, never scored and never dropped silently.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from vora_core.catalog import Catalog
from vora_core.data import failures
from vora_core.errors import DataError, StageError
from vora_core.eval import heldout
from vora_core.eval.formats import Sample, judge, prompt_text, protocol_record, score_benchmark
from vora_core.eval.loaders import Benchmark, load_benchmark
from vora_core.eval.prompts import Encoded, PromptEncoder, left_pad, open_image
from vora_core.workdir import (
    Unit,
    atomic_path,
    atomic_write_json,
    fingerprint,
    read_marker,
    run_unit_with_marker,
)

log = logging.getLogger(__name__)

STAGE = "evaluate"
# Bump when prompts, parsing or scoring change: every benchmark is then redone.
PROTOCOL_VERSION = 2
MODEL_STAGES = {"finetune": ("finetune", "final"), "merged": ("merge", ""), "pretrain": ("pretrain", "final")}


# -------------------------------------------------------------------------------------- devices


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


# ------------------------------------------------------------------------------------ prediction


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    encoder: PromptEncoder


def load_model(model_dir: str | Path, dtype: str = "auto", device: str = "auto") -> Loaded:
    """A VoRA directory → model (eval mode) + tokenizer + prompt encoder, or a `ModelError` saying why."""
    from transformers import AutoTokenizer

    from vora_core.errors import ModelError
    from vora_core.model.modeling import load_vora

    path = Path(model_dir)
    config_file = path / "config.json"
    if not path.is_dir():
        raise ModelError(f"model directory {path} does not exist; give a VoRA model directory (merged/, "
                         "finetune/final/ or pretrain/final/ of a run)")
    if not config_file.exists():
        raise ModelError(f"{path} is not a VoRA model directory (no config.json)")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except json.JSONDecodeError:
        raise ModelError(f"{config_file} is not valid JSON; {path} is not a VoRA model directory") from None
    if model_type != "vora":
        raise ModelError(f"{path} is not a VoRA model directory (config.json has model_type {model_type!r}, "
                         "expected 'vora')")
    dev = resolve_device(device)
    try:
        model = load_vora(path, dtype=resolve_dtype(dtype, dev), device=dev).eval()
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ModelError(f"{path}: the VoRA model does not load ({type(e).__name__}: {e}); is the directory "
                         "complete (config.json + model.safetensors)?") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path} has no usable tokenizer ({e}); save the tokenizer with the model") from None
    return Loaded(model, tokenizer, PromptEncoder(tokenizer, model.config))


def _encode(loaded: Loaded, sample: Sample) -> Encoded:
    images = [open_image(ref) for ref in sample.images]
    return loaded.encoder.encode(prompt_text(sample), images)


@torch.no_grad()
def generate_batch(loaded: Loaded, encoded: Sequence[Encoded], max_new_tokens: int) -> list[str]:
    """Greedy answers for already-encoded prompts, in one left-padded batch."""
    enc = loaded.encoder
    ids, mask = left_pad([e.input_ids for e in encoded], enc.pad_id())
    device = next(loaded.model.parameters()).device
    dtype = next(loaded.model.parameters()).dtype
    pixels = [p.to(device=device, dtype=dtype) for e in encoded for p in e.pixel_values]
    out = loaded.model.generate(
        ids.to(device), attention_mask=mask.to(device), pixel_values=pixels or None,
        max_new_tokens=max_new_tokens, eos_token_id=enc.stop_ids(), pad_token_id=enc.pad_id(), do_sample=False,
    )
    return [loaded.tokenizer.decode(row, skip_special_tokens=True).strip() for row in out.tolist()]


def _encode_batch(loaded: Loaded, batch: list[Sample]) -> tuple[list[tuple[Sample, Encoded]], dict[str, str]]:
    encoded, errors = [], {}
    for sample in batch:
        try:
            encoded.append((sample, _encode(loaded, sample)))
        except DataError as e:
            errors[sample.id] = str(e)
    return encoded, errors


def predict(loaded: Loaded, samples: Sequence[Sample], batch_size: int, max_new_tokens: int,
            progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Answers by sample id, and errors by sample id (images that do not decode).

    Questions are batched in order of prompt length (images first), which keeps padding low; the
    answers do not depend on the batching (padded rows decode as they would alone). The next batch's
    images are decoded and preprocessed in a thread while the current batch generates.
    """
    order = sorted(range(len(samples)), key=lambda i: (len(samples[i].images), len(prompt_text(samples[i]))))
    batches = [[samples[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]
    answers: dict[str, str] = {}
    errors: dict[str, str] = {}
    done = 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        upcoming = pool.submit(_encode_batch, loaded, batches[0]) if batches else None
        for k in range(len(batches)):
            encoded, failed = upcoming.result()
            upcoming = pool.submit(_encode_batch, loaded, batches[k + 1]) if k + 1 < len(batches) else None
            errors.update(failed)
            if encoded:
                texts = generate_batch(loaded, [e for _, e in encoded], max_new_tokens)
                answers.update({s.id: t for (s, _), t in zip(encoded, texts, strict=True)})
            done += len(batches[k])
            if progress is not None:
                progress(done, len(samples))
    return answers, errors


def evaluate_benchmark(loaded: Loaded, bench: Benchmark, out_dir: Path, batch_size: int,
                       max_new_tokens: int) -> dict[str, Any]:
    """Answer and score one benchmark; write predictions.jsonl and scores.json into `out_dir`."""
    started = time.perf_counter()

    def report(done: int, total: int) -> None:
        if done == total or done // batch_size % 20 == 0:
            log.info("evaluate %s: %d/%d questions", bench.name, done, total)

    answers, errors = predict(loaded, bench.samples, batch_size, max_new_tokens, report)
    seconds = time.perf_counter() - started
    scored, verdicts = [], []
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "predictions.jsonl", "w") as f:
        for s in bench.samples:
            record: dict[str, Any] = {"id": s.id, "question": s.question, "options": s.options, "answer": s.answer,
                                      "images": [i if isinstance(i, str) else f"<{len(i)} bytes>" for i in s.images],
                                      **{k: v for k, v in s.meta.items() if k not in ("id", "answer")}}
            if s.id in errors:
                record["error"] = errors[s.id]
            else:
                verdict = judge(s, answers[s.id], bench.protocol)
                record.update(prediction=answers[s.id], **verdict)
                scored.append(s)
                verdicts.append(verdict)
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    rejects = bench.rejects + [{"id": sid, "reason": "bad_image", "detail": e} for sid, e in errors.items()]
    pq.write_table(pa.Table.from_pylist([{k: r[k] for k in REJECT_COLUMNS} for r in rejects], REJECTS_SCHEMA),
                   out_dir / "rejects.parquet")
    reasons = Counter(r["reason"] for r in rejects)
    scores = (score_benchmark(bench.format, scored, verdicts, bench.protocol) if scored
              else {"main": None, "value": None, "protocol": protocol_record(bench.format, bench.protocol)})
    scores.update(
        benchmark=bench.name, format=bench.format, scored=len(scored), rejected=len(rejects),
        rejected_by_reason=dict(sorted(reasons.items())), seconds=round(seconds, 3),
        samples_per_s=round(len(bench.samples) / seconds, 3) if seconds else None,
        batch_size=batch_size, max_new_tokens=max_new_tokens,
    )
    (out_dir / "scores.json").write_text(json.dumps(scores, indent=2, sort_keys=True, default=str) + "\n")
    return scores


REJECT_COLUMNS = ("id", "reason", "detail")
REJECTS_SCHEMA = pa.schema([(c, pa.string()) for c in REJECT_COLUMNS])


# ---------------------------------------------------------------------------------------- stage


def model_dir(catalog: Catalog) -> Path:
    """The directory `evaluate.model` names: a stage's output (finetune, merged, pretrain) or a path."""
    choice = catalog.evaluate.model
    if choice in MODEL_STAGES:
        stage, sub = MODEL_STAGES[choice]
        base = catalog.run.stage_dir(stage)
        return base / sub if sub else base
    return Path(choice)


def model_identity(path: Path) -> list:
    """What identifies a model directory cheaply: its stage marker's fingerprint when there is one,
    else the names, sizes and modification times of its files."""
    marker = read_marker(path)
    if marker is not None:
        return ["marker", marker.get("fingerprint")]
    if not path.is_dir():
        return ["missing", str(path)]
    return sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in path.iterdir() if p.is_file())


def _data_identity(path: Path) -> list:
    """Benchmark files' identity (top level only: image folders are too large to stat at plan time)."""
    if path.is_file():
        return [path.name, path.stat().st_size, path.stat().st_mtime_ns]
    if path.is_dir():
        return sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in path.iterdir() if p.is_file())
    return ["missing", str(path)]


def benchmark_specs(catalog: Catalog) -> list[dict[str, Any]]:
    """Every benchmark of the run: the catalog's list + the held-out benchmarks of synthetic sources."""
    specs = [b.model_dump(mode="json") for b in catalog.evaluate.benchmarks]
    if catalog.evaluate.heldout:
        for name, src in catalog.sources.items():
            if src.kind == "synthetic_shapes" and src.heldout > 0:
                for kind in heldout.KINDS:
                    specs.append({"name": f"{name}-heldout-{kind}", "format": "heldout", "source": name,
                                  "kind": kind, "path": str(heldout.labels_path(catalog.run.sources(name)))})
    names = [s["name"] for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise StageError(f"evaluate: benchmark name(s) {', '.join(dupes)} used twice; give each a unique name")
    return specs


def plan(catalog: Catalog) -> list[Unit]:
    """One unit per benchmark (deterministic, cheap: benchmark files are only stat'ed)."""
    settings = catalog.evaluate
    model = model_dir(catalog)
    common = {"protocol": PROTOCOL_VERSION, "model": model_identity(model), "max_new_tokens": settings.max_new_tokens,
              "dtype": settings.dtype, "seed": catalog.seed}
    units = []
    for spec in benchmark_specs(catalog):
        out = catalog.run.stage_dir(STAGE) / spec["name"]
        fp = fingerprint(common, spec, _data_identity(Path(spec["path"])))
        units.append(Unit(stage=STAGE, id=spec["name"], output=str(out), fingerprint=fp,
                          params={"spec": spec, "model": str(model)}))
    return units


def load_spec(catalog: Catalog, spec: dict[str, Any]) -> Benchmark:
    if spec["format"] == "heldout":
        return heldout.build_heldout(spec["source"], catalog.run.sources(spec["source"]), spec["kind"], catalog.seed)
    return load_benchmark(spec["name"], spec["format"], spec["path"], spec.get("image_dir"), spec.get("split"),
                          spec.get("limit"), spec.get("circular"))


_LOADED: dict[tuple, Loaded] = {}


def _model_for(path: str, dtype: str, device: str) -> Loaded:
    """Benchmarks run one after another in one worker: load the model once per process."""
    key = (path, dtype, device, json.dumps(model_identity(Path(path))))
    loaded = _LOADED.get(key)
    if loaded is None:  # read once: a thread evaluating another model (`vora ablate --parallel`) may clear it
        loaded = load_model(path, dtype, device)
        _LOADED.clear()
        _LOADED[key] = loaded
    return loaded


def run_unit(catalog: Catalog, unit: Unit) -> dict:
    settings = catalog.evaluate
    model_path = Path(unit.params["model"])
    if not (model_path / "config.json").exists():
        raise StageError(f"evaluate: model {model_path} not found; run the stage that writes it "
                         f"(evaluate.model = {settings.model!r}) or point evaluate.model at a model directory")
    bench = load_spec(catalog, unit.params["spec"])
    if not bench.samples:
        raise StageError(f"evaluate {unit.id}: no usable questions ({len(bench.rejects)} rejected); check its files")
    loaded = _model_for(str(model_path), settings.dtype, settings.device)
    out = Path(unit.output)
    with atomic_path(out) as tmp:
        scores = evaluate_benchmark(loaded, bench, tmp, settings.batch_size, settings.max_new_tokens)
    log.info("evaluate %s: %s = %s", unit.id, scores["main"], scores["value"])
    keep = ("format", "main", "value", "scored", "rejected", "samples_per_s", "seconds")
    return {k: scores[k] for k in keep} | {"questions": len(bench.samples) + len(bench.rejects)}


def run_stage(catalog: Catalog, force: bool = False) -> list[dict]:
    """The stage without Prefect: every benchmark under its marker, then the summary."""
    results = [run_unit_with_marker(u, lambda unit: run_unit(catalog, unit), force=force) for u in plan(catalog)]
    write_summary(catalog)
    return results


def write_summary(catalog: Catalog) -> Path:
    """eval/summary.json: every finished benchmark's headline score (and where its files are)."""
    rows = {}
    for unit in plan(catalog):
        scores_file = Path(unit.output) / "scores.json"
        if unit.done and scores_file.exists():
            s = json.loads(scores_file.read_text())
            rows[unit.id] = {k: s.get(k) for k in ("format", "main", "value", "scored", "rejected")}
    summary = {"model": str(model_dir(catalog)), "benchmarks": rows}
    return atomic_write_json(catalog.run.stage_dir(STAGE) / "summary.json", summary)


def summary(catalog: Catalog) -> list[dict]:
    """Per benchmark: done or pending, the headline metric, counts and throughput (for status/artifacts)."""
    rows = []
    for unit in plan(catalog):
        marker = read_marker(unit.output) if unit.done else None
        stats = (marker or {}).get("stats", {})
        rows.append({"benchmark": unit.id, "done": marker is not None, "format": stats.get("format"),
                     "metric": stats.get("main"), "value": stats.get("value"), "scored": stats.get("scored"),
                     "rejected": stats.get("rejected"), "samples_per_s": stats.get("samples_per_s")})
    return rows


def failure_report(catalog: Catalog, examples: int = 5) -> dict:
    """The finished benchmarks' rejected questions by reason (`loaders.REASONS`, `bad_image` also for an
    image that does not decode): count, share of the questions (scored + rejected, `filtered_*` left out:
    they are not part of the benchmark) and up to `examples` example rows each; `filtered_*` counts are
    listed as filters, as the download stage lists its sources' filters."""
    import duckdb

    tables, rows = [], 0
    for unit in plan(catalog):
        out = Path(unit.output)
        if not (unit.done and (out / "rejects.parquet").exists()):
            continue
        table = pq.read_table(out / "rejects.parquet")
        tables.append(table.append_column("benchmark", pa.array([unit.id] * table.num_rows, pa.string()))
                      .append_column("row", pa.array(range(table.num_rows), pa.int64())))
        rows += json.loads((out / "scores.json").read_text())["scored"]
    schema = REJECTS_SCHEMA.append(pa.field("benchmark", pa.string())).append(pa.field("row", pa.int64()))
    rejects = pa.concat_tables(tables) if tables else schema.empty_table()
    con = duckdb.connect()
    try:
        con.register("eval_rejects", rejects)
        filtered = dict(con.execute("SELECT reason, count(*) FROM eval_rejects WHERE starts_with(reason, 'filtered_') "
                                    "GROUP BY reason ORDER BY reason").fetchall())
        rows += rejects.num_rows - sum(filtered.values())
        report = failures.failure_report(
            con, STAGE, rows, "(SELECT * FROM eval_rejects WHERE NOT starts_with(reason, 'filtered_'))",
            ("benchmark", "id", "detail"), "benchmark, row", "eval/<benchmark>/rejects.parquet", examples)
    finally:
        con.close()
    extra = [{"reason": r, "count": n, "share": None, "examples": [], "filter": True} for r, n in filtered.items()]
    return report | {"reasons": report["reasons"] + extra}
