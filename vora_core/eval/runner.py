"""The evaluate stage's mechanism (vora_core.stages.evaluate): greedy batched decoding, predictions, scores.

A unit `<bench>` loads the benchmark (loaders / the demo's held-out builder), answers every question
with the model's cached greedy `generate` in batches of `batch_size` (questions sorted by length so
a batch pads little), and writes `eval/<bench>/predictions.jsonl` (one line per question: prompt,
answer, parsed answer, score) and `eval/<bench>/scores.json` into a directory that is renamed into
place; its marker `eval/<bench>.done.json` follows. The stage's `finish` gathers `eval/summary.json`.
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
from vora_core.data.questions import Sample, prompt_text
from vora_core.errors import DataError
from vora_core.eval import heldout
from vora_core.eval.formats import judge, protocol_record, score_benchmark
from vora_core.eval.loaders import Benchmark, load_benchmark
from vora_core.eval.prompts import Encoded, PromptEncoder, left_pad, open_image
from vora_core.model.device import resolve_device, resolve_dtype
from vora_core.workdir import dir_identity

log = logging.getLogger(__name__)

# Bump when prompts, parsing or scoring change: every benchmark is then redone.
PROTOCOL_VERSION = 2
MODEL_STAGES = {"finetune": ("finetune", "final"), "merged": ("merge", ""), "pretrain": ("pretrain", "final")}


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


def load_spec(catalog: Catalog, spec: dict[str, Any]) -> Benchmark:
    if spec["format"] == "heldout":
        return heldout.build_heldout(spec["source"], catalog.run.sources(spec["source"]), spec["kind"], catalog.seed)
    return load_benchmark(spec["name"], spec["format"], spec["path"], spec.get("image_dir"), spec.get("split"),
                          spec.get("limit"), spec.get("circular"))


_LOADED: dict[tuple, Loaded] = {}


def cached_model(path: str, dtype: str, device: str) -> Loaded:
    """The one model cache of a process (evaluate's benchmarks, `vora chat`): the last model loaded."""
    key = (path, dtype, device, json.dumps(dir_identity(Path(path))))
    loaded = _LOADED.get(key)
    if loaded is None:  # read once: a thread evaluating another model (`vora ablate --parallel`) may clear it
        loaded = load_model(path, dtype, device)
        _LOADED.clear()
        _LOADED[key] = loaded
    return loaded


