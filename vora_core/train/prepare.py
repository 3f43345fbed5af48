"""The training stages' mechanism (vora_core.stages.train): tiny models, model configs, run specs.

A training unit (vora_core.stages.train.run_unit):
1. (pretrain, `model.llm: tiny`) build the demo's tiny models into `<workdir>/models/`: a byte-level
   BPE tokenizer trained on the run's own mixture text + a tiny Qwen2 (`models/llm`), and a tiny
   AIMv2 teacher (`models/teacher`, `model.teacher: tiny`). Built once (marker), reused after.
2. the sample index `<stage>/samples.arrow` (tokenised lengths for packing; rebuilt when the
   mixture, tokenizer or sequence settings change);
3. `torchrun` (vora_core.train.launch) — it resumes from the newest checkpoint by itself;
4. `final/` is renamed into place by rank 0; the unit's marker `final.done.json` follows.

pretrain builds VoRA from the LLM + teacher (LoRA + vision embedding + distillation heads train);
finetune loads the merged model (`<workdir>/merged`) and trains every LLM parameter + the vision
embedding. A finished unit is skipped on rerun unless its settings or inputs changed.
"""

from __future__ import annotations

import glob
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vora_core.catalog import Catalog, ModelSettings, SyntheticShapesSource, TrainSettings
from vora_core.errors import StageError
from vora_core.train.metrics import read_metrics
from vora_core.train.samples import SampleBuilder, build_index, mixture_files, read_mixture
from vora_core.train.spec import STAGES, DirInit, ModelInit, PartsInit, RunSpec, model_init
from vora_core.train.transforms import RESIZE_OF, check_transform
from vora_core.workdir import (
    RunDir,
    Unit,
    atomic_write_text,
    dir_identity,
    files_identity,
    fingerprint,
    is_done,
    read_marker,
    upgrade_marker,
    write_marker,
)

log = logging.getLogger(__name__)

# Settings that do not change what is trained (where it runs, how often it saves).
OPERATIONAL = ("num_workers", "checkpoint_every", "keep_last", "device", "cpu_threads", "rdzv_endpoint",
               "node_rank", "nnodes", "nproc_per_node", "strategy", "grad_checkpointing", "compile",
               "lm_loss_chunk", "frozen_bf16", "resources")
SEQUENCE_SETTINGS = ("seq_len", "system_prompt")


# ---------------------------------------------------------------------------------------- helpers


def settings_of(catalog: Catalog, stage: str) -> TrainSettings:
    if stage not in STAGES:
        raise StageError(f"{stage!r} is not a training stage ({', '.join(STAGES)})")
    return getattr(catalog, stage)


def mixture_dir(catalog: Catalog, stage: str) -> Path:
    s = settings_of(catalog, stage)
    return Path(s.mixture) if s.mixture else catalog.run.mixture(stage)


def mixture_identity(catalog: Catalog, stage: str, content: bool = True) -> list[list]:
    """A stage's mixture part files as fingerprints name them: by content (`RunDir.content_identity`: a
    copied run, or a mixture rebuilt with the same bytes, stays done), or in the earlier form (file
    name, size, mtime) that older runs' markers hold. [] before the mix stage has written them."""
    parts = sorted(glob.glob(str(mixture_dir(catalog, stage) / "part-*.parquet")))
    return catalog.run.content_identity(parts) if content else files_identity(parts)


def is_tiny(name: str | None) -> bool:
    return name == "tiny"


# ------------------------------------------------------------------------------------ tiny models


def mixture_texts(run: RunDir, dirs: list[Path]) -> list[str]:
    """Every message content of the given mixtures (the tiny tokenizer's training text)."""
    texts: list[str] = []
    for d in dirs:
        for messages in read_mixture(d, run).column("messages").to_pylist():
            texts += [m["content"] for m in messages or []]
    return texts


def build_tiny_models(catalog: Catalog, on_progress: Callable[[dict], None] | None = None) -> dict[str, Path]:
    """The demo's LLM (+ tokenizer on the run's own text) and teacher, built once into <workdir>/models/.
    `on_progress` gets `{"building": "llm reading" | "teacher", "done", "total", "unit"}` records while the
    LLM's reading practice and the teacher's pretraining run (minutes in which no training step is logged),
    then `{"built": ..., "figures": "<held-out accuracy per label>"}` when each is done."""

    def building(what: str, unit: str) -> Callable[[int, int], None] | None:
        if on_progress is None:
            return None
        return lambda done, total: on_progress({"building": what, "done": done, "total": total, "unit": unit})

    def built(what: str, accuracy: dict[str, float]) -> None:
        if on_progress is not None and accuracy:
            on_progress({"built": what, "figures": "held-out accuracy " +
                         ", ".join(f"{label} {value:.2f}" for label, value in accuracy.items())})

    from vora_core.model.tiny import build_tiny_llm, build_tiny_teacher, train_tokenizer
    from vora_core.workdir import atomic_path

    m = catalog.model
    t = m.tiny
    root = catalog.run.models
    out: dict[str, Path] = {}
    if is_tiny(m.llm):
        llm_dir = root / "llm"
        present = [s for s in STAGES if glob.glob(str(mixture_dir(catalog, s) / "part-*.parquet"))]
        fp = _tiny_llm_fingerprint(catalog, llm_dir, present)
        if not (llm_dir.exists() and is_done(llm_dir, fp)):
            texts = mixture_texts(catalog.run, [mixture_dir(catalog, s) for s in present])
            if not texts:
                raise StageError(f"no mixture text under {catalog.run.root / 'mixture'} to train the tiny tokenizer "
                                 "on; run the mix stage first")
            tokenizer = train_tokenizer(texts, vocab_size=t.vocab_size, seed=t.seed)
            reading: dict = {}
            with atomic_path(llm_dir) as tmp:
                build_tiny_llm(tmp, tokenizer, hidden_size=t.hidden_size, num_hidden_layers=t.layers,
                               num_attention_heads=t.heads, num_key_value_heads=t.kv_heads,
                               intermediate_size=t.intermediate_size, seed=t.seed)
                if t.llm_reading_steps:
                    from vora_core.train.reading import practise_reading

                    reading = practise_reading(tmp, t.llm_reading_steps, t.llm_reading_lr, seed=t.seed, log=log,
                                               on_step=building("llm reading", "steps"))
            write_marker(llm_dir, fp, {"texts": len(texts), "vocab": len(tokenizer), **reading})
            built("llm reading", reading.get("accuracy_after", {}))
        out["llm"] = llm_dir
    if is_tiny(m.teacher):
        teacher_dir = root / "teacher"
        shapes = _teacher_pictures(catalog)
        fp = fingerprint("tiny-teacher", t.model_dump(), m.image_size, m.patch_size,
                         shapes.model_dump() if shapes else None)
        if not (teacher_dir.exists() and is_done(teacher_dir, fp)):
            stats: dict = {}
            with atomic_path(teacher_dir) as tmp:
                build_tiny_teacher(tmp, image_size=m.image_size, patch_size=m.patch_size,
                                   hidden_size=t.teacher_hidden_size, num_hidden_layers=t.teacher_layers,
                                   num_attention_heads=t.teacher_heads,
                                   intermediate_size=t.teacher_intermediate_size, seed=t.seed)
                if shapes is not None:
                    from vora_core.train.teacher import pretrain_teacher

                    stats = pretrain_teacher(tmp, shapes, t.teacher_pretrain_images, t.teacher_pretrain_epochs,
                                             t.teacher_pretrain_lr, seed=t.seed,
                                             on_epoch=building("teacher", "epochs"))
            write_marker(teacher_dir, fp, stats)
            built("teacher", stats.get("validation_accuracy", {}))
        out["teacher"] = teacher_dir
    return out


def _tiny_llm_fingerprint(catalog: Catalog, llm_dir: Path, present: list[str]) -> str:
    """The tiny LLM's fingerprint: its settings and the mixtures its tokenizer reads (by content). A model
    built under the earlier form (mixture files by mtime) has its marker brought up to date."""
    fp, earlier = (fingerprint("tiny-llm", catalog.model.tiny.model_dump(),
                               [mixture_identity(catalog, s, content) for s in present]) for content in (True, False))
    if earlier != fp and llm_dir.exists() and is_done(llm_dir, earlier):
        upgrade_marker(llm_dir, read_marker(llm_dir) or {}, fp)
    return fp


def _teacher_pictures(catalog: Catalog) -> SyntheticShapesSource | None:
    """The synthetic source whose kind of picture the tiny teacher is pretrained on (None: no pretraining)."""
    if catalog.model.tiny.teacher_pretrain_images == 0:
        return None
    return next(s for s in catalog.sources.values() if isinstance(s, SyntheticShapesSource))  # the catalog checks


def model_paths(catalog: Catalog) -> tuple[str, str | None]:
    """(llm, teacher) names or directories, tiny ones resolved to <workdir>/models/."""
    m = catalog.model
    root = catalog.run.models
    llm = str(root / "llm") if is_tiny(m.llm) else m.llm
    teacher = None if m.teacher is None else str(root / "teacher") if is_tiny(m.teacher) else m.teacher
    return llm, teacher


# ---------------------------------------------------------------------------------- model configs


def teacher_normalisation(teacher: str | None) -> dict[str, list[float]]:
    """image_mean / image_std from the teacher's image processor (the student sees the same pixels)."""
    if teacher is None:
        return {}
    path = Path(teacher) / "preprocessor_config.json"
    if path.exists():
        cfg = json.loads(path.read_text())
    else:
        try:
            from transformers import AutoImageProcessor

            cfg = AutoImageProcessor.from_pretrained(teacher).to_dict()
        except (OSError, ValueError):
            return {}
    return {k: list(cfg[k]) for k in ("image_mean", "image_std") if cfg.get(k) is not None}


def pretrain_fields(m: ModelSettings, teacher: str | None, image_token_id: int | None) -> dict[str, Any]:
    fields = dict(
        lora_rank=m.lora_rank, lora_layers=m.lora_layers, vision_attention=m.vision_attention,
        distill=m.distill if teacher is not None else "none", distill_weight=m.distill_weight,
        image_size=m.image_size, patch_size=m.patch_size, max_image_tokens=m.max_image_tokens,
        image_resize=RESIZE_OF[m.transform], image_token_id=image_token_id, **teacher_normalisation(teacher),
    )
    return {k: v for k, v in fields.items() if v is not None}


def model_config(model: ModelInit | dict[str, Any]):
    """The VoRA config of a spec's model without loading any weights."""
    from transformers import AutoConfig

    from vora_core.model.config import VoRAConfig

    model = model_init(model)
    if isinstance(model, DirInit):
        return AutoConfig.from_pretrained(model.path)
    teacher = AutoConfig.from_pretrained(model.teacher) if model.teacher else None
    if teacher is not None and hasattr(teacher, "vision_config") and teacher.model_type != "aimv2_vision_model":
        teacher = teacher.vision_config
    return VoRAConfig(text_config=AutoConfig.from_pretrained(model.llm), teacher_config=teacher, **model.fields)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise StageError(f"cannot load a tokenizer from {path} ({e}); the model directory needs one") from None


# ------------------------------------------------------------------------------------------ specs


def prepare_spec(stage: str, out_dir: str | Path, mixture: str | Path, run: RunDir, model: ModelInit | dict[str, Any],
                 tokenizer_dir: str, settings: TrainSettings, transform: str,
                 attn_implementation: str = "sdpa") -> tuple[RunSpec, dict]:
    """Build (or reuse) the sample index and return the run's spec and the index stats."""
    out_dir = Path(out_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    config = model_config(model)
    check_transform(config, transform)
    if config.image_token_id is None:
        raise StageError(f"the tokenizer in {tokenizer_dir} has no {config.image_token} token; VoRA needs one "
                         "as the image placeholder")
    dumped = settings.model_dump(mode="json")
    index = out_dir / "samples.arrow"
    geometry = {k: getattr(config, k) for k in ("image_size", "patch_size", "max_image_tokens", "image_resize",
                                                 "image_token_id")}
    fp = fingerprint("index", files_identity(mixture_files(mixture)), str(Path(tokenizer_dir).resolve()),
                     dir_identity(Path(tokenizer_dir)), geometry, transform, {k: dumped[k] for k in SEQUENCE_SETTINGS})
    if index.exists() and is_done(index, fp):
        stats = read_marker(index)["stats"]
    else:
        builder = SampleBuilder(tokenizer, config, transform, settings.seq_len, settings.system_prompt)
        stats = build_index(mixture, run, builder, index, workers=max(1, settings.num_workers))
        write_marker(index, fp, stats)
    spec = RunSpec(stage=stage, out_dir=str(out_dir), index=str(index), tokenizer=tokenizer_dir,
                   model=model_init(model), settings=settings, transform=transform,
                   attn_implementation=attn_implementation)
    return spec, stats


def stage_model(catalog: Catalog, stage: str) -> tuple[ModelInit, str]:
    """(model spec, tokenizer directory) of a stage."""
    if stage == "pretrain":
        llm, teacher = model_paths(catalog)
        tokenizer = load_tokenizer(llm)
        image_token_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        if image_token_id is None or image_token_id == tokenizer.unk_token_id:
            image_token_id = None
        fields = pretrain_fields(catalog.model, teacher, image_token_id)
        return PartsInit(llm=llm, teacher=teacher, fields=fields), llm
    path = catalog.finetune.model or str(catalog.run.stage_dir("merge"))
    if not (Path(path) / "config.json").exists():
        raise StageError(f"finetune: {path} is not a model directory; run the merge stage first or set finetune.model")
    return DirInit(path=path), path


def fresh_start_if_stale(out_dir: Path, unit: Unit) -> None:
    """Checkpoints resume only the run they belong to: when the unit's fingerprint changed (other
    settings, mixture or model) or the unit is forced (its marker still matches), the old checkpoints,
    metrics and curve go and training starts from step 0."""
    ident = out_dir / "run.fingerprint"
    stale = unit.done or (ident.exists() and ident.read_text().strip() not in (unit.fingerprint,
                                                                               *unit.earlier_fingerprints))
    if stale:
        log.info("%s: settings or inputs changed (or forced): starting from step 0", unit.stage)
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
        for name in ("metrics.jsonl", "loss.png", "train.log"):
            (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ident, unit.fingerprint + "\n")


def summarise(metrics_path: Path) -> dict:
    """Final losses and mean throughput from metrics.jsonl (for markers and table artifacts)."""
    rows = [r for r in read_metrics(metrics_path) if not r.get("skipped")]
    if not rows:
        return {}
    last = rows[-1]
    tail = rows[len(rows) // 2:] or rows  # steady state: the first steps include warm-up costs
    return {
        "final_loss": last["loss"], "final_lm_loss": last["lm_loss"], "final_distill": last.get("distill"),
        "tokens_per_s": sum(r["tokens"] for r in tail) / max(1e-9, sum(r["step_s"] for r in tail)),
        "samples_per_s": sum(r["samples"] for r in tail) / max(1e-9, sum(r["step_s"] for r in tail)),
        "padding_fraction": sum(r["padding_fraction"] for r in rows) / len(rows),
        "first_loss": rows[0]["loss"],
    }


