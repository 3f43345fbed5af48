"""The GPU suite: one run on a fresh GPU machine, one JSON + markdown report (benchmarks/gpu/run.sh runs it).

Sections (each reports status ok | skipped | failed; one failing section does not stop the others):
  flex_vs_sdpa  FlexAttention BlockMask and SDPA per document vs dense-mask SDPA: loss and LoRA gradients of
                one packed batch with images, forward + backward (flex on CUDA only: it has no CPU backward)
  step          the pretraining step at Qwen2.5-7B dimensions with random weights of bf16 values (fp32 master
                weights + bf16 autocast, frozen linear weights kept in bf16, as the train stage runs): eager vs
                compiled (vora_core.model.compile) x flex vs sdpa, or the --variants given (frozen weights in
                fp32, more rows per step); tokens/s, MFU (FLOPs counted explicitly, formula in the report),
                peak memory
  recaption     the recaption engine `vllm` on the tiny captioner saved to disk: images/s
  demo          `vora run catalogs/demo.yaml` on the GPU, fresh workdir: wall time. Without Prefect & co.:
                with --demo-catalog, that catalog's model stages (pretrain, merge, finetune, evaluate; its
                data stages done elsewhere) through vora_core; else the demo's pretraining steps at its size

Sections whose packages are missing (vllm; prefect for the demo) are skipped with the reason. With
--budget-s, a section or step variant that would start after the budget is spent is skipped (reason
recorded), and report.json + report.md are rewritten after every section and step variant, so a run
cut short by its host still leaves the results so far.

    .venv/bin/python benchmarks/gpu/suite.py --out gpu-report            # on the GPU machine
    .venv/bin/python benchmarks/gpu/suite.py --cpu-smoke --out /tmp/r    # reduced sizes on CPU (a test runs it)
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.util
import json
import os
import platform
import random
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # vora_core without an install (run.sh's preinstalled mode)

SECTIONS = ("flex_vs_sdpa", "step", "recaption", "demo")
IMAGE_TOKEN = 3
# Dense bf16 tensor-core peak (TFLOP/s) by device name, for MFU; --peak-tflops overrides.
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}

FLOPS_FORMULA = (
    "FLOPs per step, counted for the work the step does (frozen weights get no weight gradient): "
    "LLM blocks 2·N_base·T (fwd) + 2·N_base·T (bwd, activation grads) + 6·N_lora·T; "
    "attention 4·d·P per layer fwd + 8·d·P bwd, d = heads·head_dim, P = visible (query, key) pairs of the "
    "packed, image-bidirectional mask (not the L² a dense mask computes); LM head 4·V·H·T_label (fwd + "
    "activation grad); vision embedding 6·N_ve·T_vis; aux heads 6·H·W·T_vis per distilled block; teacher "
    "forward 2·N_teacher·T_vis + 4·W·Σ_img n_img² per block. N_base/N_lora/N_teacher = their linear-layer "
    "weights; T = tokens, T_vis = vision tokens. MFU = FLOPs / (step seconds × peak bf16 dense FLOP/s)."
)


@dataclass
class StepConfig:
    hidden: int = 3584
    layers: int = 28
    heads: int = 28
    kv_heads: int = 4
    intermediate: int = 18944
    vocab: int = 152064
    lora_rank: int = 1024
    lora_layers: int = 24
    teacher_hidden: int = 1536
    teacher_layers: int = 24
    teacher_heads: int = 12
    teacher_intermediate: int = 4096
    image_size: int = 448
    patch_size: int = 14
    row_tokens: int = 4096
    batch: int = 1
    image_share: float = 0.7


SMOKE = StepConfig(hidden=64, layers=3, heads=4, kv_heads=2, intermediate=128, vocab=512, lora_rank=8,
                   lora_layers=2, teacher_hidden=32, teacher_layers=2, teacher_heads=2, teacher_intermediate=64,
                   image_size=56, patch_size=14, row_tokens=1024)


# ------------------------------------------------------------------------------------------ model + batch


def build_model(c: StepConfig, attn: str, device: str, per_document: str = "auto"):
    from transformers import Aimv2VisionConfig, Qwen2Config

    from vora_core.model.config import VoRAConfig
    from vora_core.model.lora import configure_trainable
    from vora_core.model.modeling import VoRAForCausalLM

    text = Qwen2Config(vocab_size=c.vocab, hidden_size=c.hidden, intermediate_size=c.intermediate,
                       num_hidden_layers=c.layers, num_attention_heads=c.heads, num_key_value_heads=c.kv_heads,
                       tie_word_embeddings=False)
    teacher = Aimv2VisionConfig(hidden_size=c.teacher_hidden, intermediate_size=c.teacher_intermediate,
                                num_hidden_layers=c.teacher_layers, num_attention_heads=c.teacher_heads,
                                image_size=c.image_size, patch_size=c.patch_size, use_head=False)
    config = VoRAConfig(text_config=text, teacher_config=teacher, lora_rank=c.lora_rank, lora_layers=c.lora_layers,
                        image_size=c.image_size, patch_size=c.patch_size, image_token_id=IMAGE_TOKEN,
                        attn_implementation=attn, per_document_attention=per_document)
    torch.manual_seed(0)
    with torch.device(device):
        model = VoRAForCausalLM(config)
    if device != "meta":  # values bf16 holds, held in fp32: what loading Qwen2.5's bf16 checkpoint gives
        with torch.no_grad():
            for param in model.parameters():
                param.copy_(param.to(torch.bfloat16))
    configure_trainable(model, "pretrain")
    return model.train()


def make_batch(c: StepConfig, model, device: str, seed: int = 0):
    from train_step import build_batch

    args = argparse.Namespace(batch=c.batch, row_tokens=c.row_tokens, vocab=c.vocab, image_share=c.image_share,
                              image_size=c.image_size)
    per_image = model.config.num_image_tokens(c.image_size, c.image_size)
    torch.manual_seed(seed)  # the images: every variant times the same batch
    ids, docs, labels, images = build_batch(args, random.Random(seed), per_image)
    return {"input_ids": ids.to(device), "doc_ids": docs.to(device), "labels": labels.to(device),
            "pixel_values": [i.to(device) for i in images] or None}


def step_flops(c: StepConfig, model, batch: dict) -> float:
    """The FLOPs of one forward + backward of `batch` (FLOPS_FORMULA)."""
    from vora_core.model import masks

    ids, docs = batch["input_ids"], batch["doc_ids"]
    tokens = ids.numel()
    is_image = ids == IMAGE_TOKEN
    t_vis = int(is_image.sum())
    t_label = int(((batch["labels"][:, 1:] != -100) & (docs[:, 1:] == docs[:, :-1])).sum())
    n_images = len(batch["pixel_values"] or [])
    per_image = t_vis // max(1, n_images)
    image_ids = masks.image_ids_from_input_ids(ids, IMAGE_TOKEN, torch.full((n_images,), per_image))
    limit = masks.visibility_limit(image_ids, n_images, True)
    pairs = int((masks.dense_mask(docs, limit, torch.float32) == 0).sum())

    lora, base = 0, 0
    for name, p in model.llm.get_decoder().layers.named_parameters():
        if name.endswith("weight") and p.dim() == 2:
            if ".lora_" in name:
                lora += p.numel()
            else:
                base += p.numel()
    d_attn = c.heads * (c.hidden // c.heads)
    ve = sum(m.weight.numel() for m in model.vision_embedding.modules() if isinstance(m, (torch.nn.Conv2d,
                                                                                         torch.nn.Linear)))
    aux = len(model.config.distill_blocks) * c.hidden * c.teacher_hidden
    teacher = sum(p.numel() for n, p in model.teacher.named_parameters() if p.dim() == 2 and "embed" not in n)
    flops = 4 * base * tokens + 6 * lora * tokens
    flops += 12 * d_attn * pairs * c.layers
    flops += 4 * c.vocab * c.hidden * t_label
    flops += 6 * ve * t_vis + 6 * aux * t_vis
    flops += 2 * teacher * t_vis + 4 * c.teacher_hidden * n_images * per_image**2 * c.teacher_layers
    return float(flops)


def peak_tflops(override: float | None) -> float | None:
    if override is not None:
        return override
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def matmul_tflops(device: str) -> float | None:
    """Measured bf16 ceiling: an 8192³ matrix product on random data, mean of 10 after 3 warm-ups."""
    if device != "cuda":
        return None
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * 8192**3 * 10 / (start.elapsed_time(end) / 1e3) / 1e12


def randomize_lora_b(model, std: float = 0.02) -> None:
    """Non-zero LoRA B (peft starts it at zero), so that LoRA changes the outputs: never test or time on zeros."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def block_sparsity(batch: dict) -> dict:
    """The FlexAttention tiles of `batch`'s BlockMask: computed vs skipped, against a causal mask of the same size.

    `cross_document_skipped_fraction` = tiles skipped beyond those a plain causal mask skips (net of the
    tiles above the diagonal that bidirectional images make visible)."""
    from torch.nn.attention.flex_attention import create_block_mask

    from vora_core.model import masks

    ids, docs = batch["input_ids"], batch["doc_ids"]
    n_images = len(batch["pixel_values"] or [])
    per_image = int((ids == IMAGE_TOKEN).sum()) // max(1, n_images)
    image_ids = masks.image_ids_from_input_ids(ids, IMAGE_TOKEN, torch.full((n_images,), per_image))
    limit = masks.visibility_limit(image_ids, n_images, True)
    rows, length = docs.shape

    def tiles(bm) -> tuple[int, int]:
        total = rows * bm.kv_num_blocks.shape[-1] * bm.kv_indices.shape[-1]
        computed = int(bm.kv_num_blocks.sum()) + (int(bm.full_kv_num_blocks.sum())
                                                  if bm.full_kv_num_blocks is not None else 0)
        return total, computed

    mask = masks.block_mask(docs, limit)
    total, computed = tiles(mask)
    _, causal = tiles(create_block_mask(lambda b, h, q, kv: q >= kv, rows, None, length, length,
                                        device=docs.device))
    visible = int((masks.dense_mask(docs, limit, torch.float32) == 0).sum())
    return {"block_size": list(mask.BLOCK_SIZE), "tiles": total, "tiles_computed": computed,
            "skipped_fraction": (total - computed) / total, "causal_skipped_fraction": (total - causal) / total,
            "cross_document_skipped_fraction": (causal - computed) / total,
            "visible_pairs_fraction": visible / (rows * length * length),
            "documents": int(sum(len(torch.unique(d[d >= 0])) for d in docs)), "images": n_images}


@dataclass
class Run:
    """The report being written, and the time budget (`--budget-s`) the sections share."""

    out: Path
    report: dict
    deadline: float | None = None

    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.perf_counter()

    def save(self, name: str | None = None, section: dict | None = None) -> None:
        if name is not None:
            self.report["sections"][name] = section
        (self.out / "report.json").write_text(json.dumps(self.report, indent=2))
        (self.out / "report.md").write_text(markdown(self.report))


# Seconds a step variant needs at least (compile included) to be started under --budget-s.
RESERVE_S = {"eager": 30.0, "compiled": 120.0}

# ------------------------------------------------------------------------------------------ sections


def section_flex_vs_sdpa(args, run: Run) -> dict:
    c = SMOKE if args.cpu_smoke else StepConfig(hidden=256, layers=4, heads=4, kv_heads=2, intermediate=512,
                                                vocab=4096, lora_rank=16, lora_layers=2, teacher_hidden=128,
                                                teacher_layers=2, teacher_heads=2, teacher_intermediate=256,
                                                image_size=224, row_tokens=1024, batch=2)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {}
    # dense-mask SDPA, SDPA per document (vora_core.model.document_attention), FlexAttention
    variants = {"sdpa": ("sdpa", "never"), "sdpa_per_document": ("sdpa", "always")}
    if device == "cuda":
        variants["flex_attention"] = ("flex_attention", "auto")
    for name, (attn, per_document) in variants.items():
        model = build_model(c, attn, device, per_document)
        randomize_lora_b(model)
        batch = make_batch(c, model, device)
        out = model(**batch)
        out.loss.backward()
        grads = {n: p.grad.float() for n, p in model.named_parameters() if ".lora_" in n and p.grad is not None}
        results[name] = (out.loss.detach().float(), grads)
        del model
    per_document = _agreement(results["sdpa"], results["sdpa_per_document"])
    report = {"config": asdict(c), "device": device, "precision": "fp32", "loss_sdpa": float(results["sdpa"][0]),
              "lora_tensors": len(results["sdpa"][1]), "block_sparsity": block_sparsity(batch),
              "per_document": {**per_document, "score_cells_fraction": document_cells_fraction(batch)}}
    if device != "cuda":
        return {**report, "status": "skipped" if per_document["equal"] else "failed",
                "reason": "FlexAttention needs CUDA (no CPU backward); sdpa ran, dense and per document"}
    flex = _agreement(results["sdpa"], results["flex_attention"])
    equal = flex["equal"] and per_document["equal"]
    return {**report, "status": "ok" if equal else "failed", "loss_flex": float(results["flex_attention"][0]),
            **flex}


def _agreement(reference: tuple, other: tuple) -> dict:
    """Loss and LoRA gradients of two attention paths on one batch: equal within fp32 tolerance?"""
    (loss_s, g_s), (loss_o, g_o) = reference, other
    max_diff = max(float((g_s[n] - g_o[n]).abs().max()) for n in g_s)
    scale = max(float(g.abs().max()) for g in g_s.values())
    rel = max(float((g_s[n] - g_o[n]).norm() / g_s[n].norm().clamp(min=1e-30)) for n in g_s)
    equal = abs(float(loss_s - loss_o)) <= 1e-4 * abs(float(loss_s)) + 1e-5 and max_diff <= 1e-3 * scale + 1e-6
    return {"loss_abs_diff": abs(float(loss_s - loss_o)), "lora_grad_max_abs_diff": max_diff,
            "lora_grad_max_abs": scale, "lora_grad_max_rel_l2": rel, "equal": equal}


def document_cells_fraction(batch: dict, mode: str = "always") -> float | None:
    """Score cells SDPA per document computes under `mode`, as a fraction of the dense mask's (None: not
    regrouped)."""
    from vora_core.model import document_attention

    docs = batch["doc_ids"]
    segments = document_attention.document_segments(docs, torch.arange(docs.shape[1]).expand_as(docs),
                                                     torch.float32, mode)
    return None if segments is None else segments.cells / segments.dense_cells


def _time_steps(model, batch: dict, steps: int, device: str) -> dict:
    """Forward + backward under bf16 autocast (as the train stage runs on GPU; on CPU too, so that the smoke
    runs the same code): first step (compile included) and mean of `steps` more, peak memory (CUDA)."""
    times = []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16):
            out = model(**batch)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if not torch.isfinite(out.loss.detach()).item():
        raise RuntimeError(f"the loss is {float(out.loss)}")
    return {"step_s": sum(times[1:]) / len(times[1:]), "first_step_s": times[0], "loss": float(out.loss.detach()),
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}


@dataclass(frozen=True)
class StepVariant:
    """One timed step configuration: attention, eager or compiled blocks, the frozen linear weights' storage
    (`bf16`: `vora_core.model.frozen_weights`, what the train stage does under bf16 autocast; `fp32`: as
    loaded), rows of `row_tokens` per step, and `per_document_attention` (sdpa)."""

    attn: str
    mode: str
    frozen: str = "bf16"
    rows: int = 1
    per_document: str = "auto"

    @classmethod
    def parse(cls, text: str) -> StepVariant:
        """`ATTN:MODE[:FROZEN[:ROWS[:PER_DOCUMENT]]]`, e.g. `flex_attention:compiled:bf16:2`."""
        parts = text.split(":")
        attn, mode, frozen, rows, per_document = (parts + ["", "", "bf16", "1", "auto"][len(parts):])[:5]
        if (attn not in ("flex_attention", "sdpa") or mode not in ("eager", "compiled")
                or frozen not in ("bf16", "fp32") or not rows.isdigit() or int(rows) < 1
                or per_document not in ("auto", "always", "never") or len(parts) > 5):
            raise ValueError(f"step variant {text!r}: write ATTN:MODE[:FROZEN[:ROWS[:PER_DOCUMENT]]] with ATTN "
                             "flex_attention|sdpa, MODE eager|compiled, FROZEN bf16|fp32, ROWS >= 1, PER_DOCUMENT "
                             "auto|always|never")
        return cls(attn, mode, frozen, int(rows), per_document)

    @property
    def label(self) -> str:
        return f"{self.attn}:{self.mode}:{self.frozen}:{self.rows}:{self.per_document}"


def parse_variants(text: str) -> list[StepVariant]:
    """`--variants`: a comma list of `StepVariant.parse` forms (a bad one is argparse's exit 2)."""
    try:
        return [StepVariant.parse(v) for v in text.split(",") if v]
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def default_variants(device: str, smoke_compile: bool) -> list[StepVariant]:
    attns = ["flex_attention", "sdpa"] if device == "cuda" else ["sdpa"]
    modes = ["eager", "compiled"] if (device == "cuda" or smoke_compile) else ["eager"]
    return [StepVariant(a, m) for a in attns for m in modes]


def section_step(args, run: Run) -> dict:
    from vora_core.model import frozen_weights
    from vora_core.model.compile import compile_blocks

    c = SMOKE if args.cpu_smoke else StepConfig()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    variants = args.variants or default_variants(device, args.smoke_compile)
    peak = peak_tflops(args.peak_tflops)
    result = {"status": "running", "config": asdict(c), "device": device, "steps": args.steps, "peak_tflops": peak,
              "matmul_tflops": matmul_tflops(device), "flops_formula": FLOPS_FORMULA, "runs": []}
    runs = result["runs"]
    model, model_attn, compiled, lean = None, None, False, []
    for variant in variants:
        base = {"attn": variant.attn, "mode": variant.mode, "frozen": variant.frozen, "rows": variant.rows,
                "per_document": variant.per_document}
        if run.left() < RESERVE_S[variant.mode]:
            runs.append({**base, "status": "skipped", "error": f"time budget (--budget-s) spent: "
                         f"{max(0.0, run.left()):.0f} s left, {RESERVE_S[variant.mode]:.0f} s needed"})
            continue
        try:
            if model is None or model_attn != variant.attn or (compiled and variant.mode == "eager"):
                model = None
                torch._dynamo.reset()  # compiled code holds the blocks: free the model before building the next
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()
                model, model_attn, compiled, lean = build_model(c, variant.attn, device), variant.attn, False, []
                randomize_lora_b(model)
            if (variant.frozen == "bf16") != bool(lean):
                if lean:
                    frozen_weights.restore(model, lean)
                    lean = []
                else:
                    lean = frozen_weights.store_exact(model)
                torch._dynamo.reset()  # compiled blocks do not guard on a parameter's dtype changed in place
            model.config.per_document_attention = variant.per_document
            if variant.mode == "compiled" and not compiled:
                compile_blocks(model)
                compiled = True
            cv = StepConfig(**{**asdict(c), "batch": variant.rows})
            batch = make_batch(cv, model, device)
            if "block_sparsity" not in result:
                result["block_sparsity"] = block_sparsity(batch)
            flops = step_flops(cv, model, batch)
            model_gib = torch.cuda.memory_allocated() / 2**30 if device == "cuda" else None
            timed = _time_steps(model, batch, args.steps, device)
        except Exception as err:  # one variant failing (e.g. flex + compile) leaves the others
            runs.append({**base, "status": "failed", "error": f"{type(err).__name__}: {err}"[:2000]})
            model, batch = None, None
            if device == "cuda":
                torch.cuda.empty_cache()
            run.save("step", result)
            continue
        seconds, tokens = timed["step_s"], batch["input_ids"].numel()
        cells = document_cells_fraction(batch, variant.per_document) if variant.attn == "sdpa" else None
        runs.append({**base, "status": "ok", **timed, "per_document_cells_fraction": cells,
                     "tokens_per_s": tokens / seconds, "tflops_per_s": flops / seconds / 1e12,
                     "mfu": flops / seconds / (peak * 1e12) if peak else None,
                     "mfu_of_measured_matmul": (flops / seconds / (result["matmul_tflops"] * 1e12)
                                                if result["matmul_tflops"] else None),
                     "model_memory_gib": model_gib, "flops_per_step": flops, "tokens": tokens,
                     "images": len(batch["pixel_values"] or []), "frozen_bf16_tensors": len(lean)})
        print(f"[gpu-suite] step {variant.label}: {seconds:.3f} s/step, {tokens / seconds:.0f} tokens/s", flush=True)
        run.save("step", result)  # after each variant: a run cut short keeps the variants so far
        del batch
    result["status"] = "ok" if all(r["status"] == "ok" for r in runs) else (
        "failed" if any(r["status"] == "failed" for r in runs) else "partial")
    return result


def missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def section_recaption(args, run: Run) -> dict:
    if importlib.util.find_spec("vllm") is None:
        other = ROOT / ".venv-vllm" / "bin" / "python"  # vllm pins its own torch: its own environment
        if not other.exists():
            return {"status": "skipped", "reason": "vllm is not installed (INSTALL_VLLM=1 benchmarks/gpu/run.sh)"}
        sub_out = Path(args.out) / "vllm"
        subprocess.run([str(other), __file__, "--out", str(sub_out), "--sections", "recaption",
                        "--images", str(args.images)], cwd=ROOT, check=False)
        return json.loads((sub_out / "report.json").read_text())["sections"]["recaption"]
    from recaption import images, requests

    from vora_core.caption.engines import VllmEngine
    from vora_core.caption.models import build_tiny_captioner
    from vora_core.catalog import RecaptionSettings, TinyCaptionerSettings

    model_dir = build_tiny_captioner(Path(args.out) / "captioner", TinyCaptionerSettings())
    reqs = requests(images(args.images), RecaptionSettings().prompts)
    settings = RecaptionSettings(engine="vllm", model=str(model_dir), max_new_tokens=16, vllm={"max_model_len": 4096})
    engine = VllmEngine(settings, str(model_dir))
    engine.caption(reqs[:8])
    start = time.perf_counter()
    out = engine.caption(reqs)
    seconds = time.perf_counter() - start
    return {"status": "ok", "images": len(reqs), "seconds": seconds, "images_per_s": len(reqs) / seconds,
            "tokens_per_s": sum(r.n_tokens for r in out) / seconds}


def demo_config() -> tuple[StepConfig, dict]:
    """The demo catalog's pretraining model and batch as a StepConfig, and its pretrain settings."""
    import yaml

    catalog = yaml.safe_load((ROOT / "catalogs" / "demo.yaml").read_text())
    model, tiny, pretrain = catalog["model"], catalog["model"]["tiny"], catalog["pretrain"]
    c = StepConfig(hidden=tiny["hidden_size"], layers=tiny["layers"], heads=tiny["heads"], kv_heads=tiny["kv_heads"],
                   intermediate=tiny["intermediate_size"], vocab=tiny["vocab_size"], lora_rank=model["lora_rank"],
                   lora_layers=model.get("lora_layers") or tiny["teacher_layers"],
                   teacher_hidden=tiny["teacher_hidden_size"], teacher_layers=tiny["teacher_layers"],
                   teacher_heads=tiny["teacher_heads"], teacher_intermediate=tiny["teacher_intermediate_size"],
                   image_size=model["image_size"], patch_size=model["patch_size"], row_tokens=pretrain["seq_len"],
                   batch=pretrain["micro_batch"])
    return c, pretrain


def demo_pretrain_steps(run: Run) -> dict:
    """The demo's `pretrain.steps` optimiser steps at its model size and micro-batch (random weights, synthetic
    packed rows, bf16 autocast, fused AdamW), eager: the pretraining stage's compute without its data loader,
    teacher pretraining, checkpoints or Prefect."""
    c, pretrain = demo_config()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    steps = pretrain["steps"] if device == "cuda" else 1  # CPU: checks the code, not the time
    if run.left() < RESERVE_S["eager"]:
        return {"status": "skipped", "reason": "time budget (--budget-s) spent"}
    model = build_model(c, "sdpa", device)
    batch = make_batch(c, model, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=pretrain["lr"], fused=device == "cuda")
    times = []
    for _ in range(steps + 1):  # the first is the warm-up
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if run.left() <= 0:
            break
    done = len(times) - 1
    return {"status": "ok" if done == steps else "partial", "config": asdict(c), "device": device, "steps": done,
            "step_s": sum(times[1:]) / max(1, done), "seconds": sum(times),
            "tokens_per_step": batch["input_ids"].numel(),
            "final_loss": float(loss.detach())}


MODEL_STAGES = ("pretrain", "merge", "finetune", "evaluate")


def demo_model_stages(catalog_path: str, run: Run) -> dict:
    """pretrain → merge → finetune → evaluate of a catalog whose data stages (download, recaption, mix) are
    done, through the stage modules without Prefect (`vora_core.ablation.chain.run_stages`): wall time per
    stage and the eval summary. Stages already done (markers) are skipped by the stage modules themselves."""
    from vora_core.ablation.chain import run_stages
    from vora_core.catalog import load_catalog

    catalog = load_catalog(catalog_path)
    result: dict = {"catalog": catalog_path, "model_stages": {}}
    for stage in MODEL_STAGES:
        if run.left() < RESERVE_S["eager"]:
            result["model_stages"][stage] = {"status": "skipped", "reason": "time budget (--budget-s) spent"}
            continue
        start = time.perf_counter()
        rows = run_stages(catalog, [stage])[stage]
        result["model_stages"][stage] = {"status": ",".join(sorted({r["status"] for r in rows})),
                                         "wall_s": round(time.perf_counter() - start, 1)}
        run.save("demo", {"status": "running", **result})
    result["model_stages_wall_s"] = round(sum(v.get("wall_s", 0) for v in result["model_stages"].values()), 1)
    summary = catalog.run.stage_dir("evaluate") / "summary.json"
    result["eval_summary"] = json.loads(summary.read_text()) if summary.exists() else None
    return result


def section_demo(args, run: Run) -> dict:
    if args.cpu_smoke:
        return {"status": "skipped", "reason": "not run in --cpu-smoke (make demo runs it on CPU)"}
    absent = missing("prefect", "duckdb", "img2dataset", "webdataset")
    if absent:
        why = f"`vora run` not run: it needs the pipeline's packages; missing here: {', '.join(absent)}"
        if args.demo_catalog and not missing("duckdb", "pydantic"):
            return {"status": "partial", "reason": f"{why}. Ran instead: the model stages of {args.demo_catalog} "
                    "(its data stages done elsewhere) through vora_core, without Prefect (model_stages)",
                    **demo_model_stages(args.demo_catalog, run)}
        return {"status": "partial", "reason": f"{why} (make setup installs them). Ran instead: the demo's "
                "pretraining steps at its model size (demo_pretrain_steps)",
                "demo_pretrain_steps": demo_pretrain_steps(run)}
    import yaml

    workdir = Path(args.out).resolve() / "demo-run"
    catalog = yaml.safe_load((ROOT / "catalogs" / "demo.yaml").read_text())
    catalog["workdir"] = str(workdir)
    path = Path(args.out).resolve() / "demo.yaml"
    path.write_text(yaml.safe_dump(catalog, sort_keys=False))
    vora = Path(sys.executable).with_name("vora")
    start = time.perf_counter()
    timeout = None if run.deadline is None else max(1.0, run.left())
    try:
        done = subprocess.run([str(vora), "run", str(path)], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as err:
        (Path(args.out) / "demo.log").write_text(str(err.stdout or "") + str(err.stderr or ""))
        return {"status": "failed", "error": f"time budget (--budget-s) spent after {timeout:.0f} s", "log": "demo.log"}
    seconds = time.perf_counter() - start
    (Path(args.out) / "demo.log").write_text(done.stdout + done.stderr)
    summary = workdir / "eval" / "summary.json"
    return {"status": "ok" if done.returncode == 0 else "failed", "wall_s": seconds, "returncode": done.returncode,
            "log": "demo.log", "eval_summary": json.loads(summary.read_text()) if summary.exists() else None}


# ------------------------------------------------------------------------------------------ report


def _fmt(value, spec: str, none: str = "n/a") -> str:
    return none if value is None else format(value, spec)


def markdown(report: dict) -> str:
    env = report.get("environment", {})
    lines = [f"# GPU suite report ({report['date']})", "",
             f"device: {report['device']}; torch {report['torch']}; cpu_smoke: {report['cpu_smoke']}",
             "environment: " + ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    for name in SECTIONS:
        sec = report["sections"].get(name)
        if sec is None:
            continue
        lines.append(f"## {name}: {sec['status']}")
        if sec.get("reason") or sec.get("error"):
            lines.append(f"{sec.get('reason') or sec.get('error')}")
        if name == "step" and "runs" in sec:
            lines += ["", sec["flops_formula"], "",
                      f"peak bf16 (datasheet): {_fmt(sec['peak_tflops'], '.1f')} TFLOP/s; measured 8192³ bf16 "
                      f"matmul: {_fmt(sec['matmul_tflops'], '.1f')} TFLOP/s", ""]
            if sec.get("block_sparsity"):
                lines += [f"block sparsity of the timed batch: {sec['block_sparsity']}", ""]
            lines += ["| attn | mode | frozen | rows | status | step s | first step s | tokens/s | TFLOP/s | MFU "
                      "| MFU of matmul | peak GiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in sec["runs"]:
                head = f"| {r['attn']} | {r['mode']} | {r['frozen']} | {r['rows']} |"
                if r["status"] != "ok":
                    lines.append(f"{head} {r['status']}: {r['error']} | | | | | | | |")
                    continue
                lines.append(f"{head} ok | {r['step_s']:.3f} | {r['first_step_s']:.1f} | "
                             f"{r['tokens_per_s']:.0f} | {r['tflops_per_s']:.1f} | "
                             f"{_fmt(r['mfu'] and 100 * r['mfu'], '.1f')} % | "
                             f"{_fmt(r['mfu_of_measured_matmul'] and 100 * r['mfu_of_measured_matmul'], '.1f')} % | "
                             f"{_fmt(r['peak_memory_gib'], '.1f')} |")
        else:
            shown = {k: v for k, v in sec.items() if k not in ("status", "reason", "error", "config", "traceback")}
            lines += [f"- {k}: {v}" for k, v in shown.items()]
        lines.append("")
    return "\n".join(lines)


def environment() -> dict:
    """Versions the figures depend on, and the wheels run.sh carried in (VORA_GPU_CARRIED)."""
    import importlib.metadata as md

    env = {"python": platform.python_version(), "executable": sys.executable}
    for dist in ("torch", "triton", "transformers", "peft"):
        try:
            env[dist] = md.version(dist)
        except md.PackageNotFoundError:
            env[dist] = None
    env["cuda"] = torch.version.cuda
    env["carried_wheels"] = sorted(w for w in os.environ.get("VORA_GPU_CARRIED", "").split(",") if w)
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu-report", help="report directory (report.json, report.md)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--cpu-smoke", action="store_true", help="reduced sizes on CPU: checks the suite itself")
    parser.add_argument("--smoke-compile", action="store_true", help="--cpu-smoke: time the compiled step too (slow)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--variants", default=None, type=parse_variants,
                        help="step: comma list of ATTN:MODE[:FROZEN[:ROWS[:PER_DOCUMENT]]] (default: "
                        "flex_attention and sdpa x eager and compiled, frozen bf16, 1 row; on CPU sdpa:eager)")
    parser.add_argument("--images", type=int, default=256, help="recaption: images")
    parser.add_argument("--peak-tflops", type=float, default=None, help="MFU denominator (default: by device name)")
    parser.add_argument("--demo-catalog", default=None,
                        help="demo without Prefect: run this catalog's model stages (its data stages done elsewhere)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall-time budget: sections and step variants that would start after it are skipped")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({platform.processor() or 'cpu'})"
    report = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "device": device,
              "torch": torch.__version__, "cpu_smoke": args.cpu_smoke, "environment": environment(),
              "sections": {}}
    run = Run(out, report, None if args.budget_s is None else time.perf_counter() + args.budget_s)
    functions = {"flex_vs_sdpa": section_flex_vs_sdpa, "step": section_step, "recaption": section_recaption,
                 "demo": section_demo}
    for name in sections:
        started = time.perf_counter()
        if run.left() <= 0:
            result = {"status": "skipped", "reason": f"time budget (--budget-s {args.budget_s:g}) spent"}
        else:
            try:
                result = functions[name](args, run)
            except Exception as err:  # the report still gets written, with what went wrong
                result = {"status": "failed", "error": f"{type(err).__name__}: {err}"[:2000],
                          "traceback": traceback.format_exc()}
        result["seconds"] = round(time.perf_counter() - started, 1)
        print(f"[gpu-suite] {name}: {result['status']} ({result['seconds']} s)", flush=True)
        run.save(name, result)  # after each section: partial results survive
    print(f"[gpu-suite] report: {out / 'report.json'}, {out / 'report.md'}")
    return 0 if all(s["status"] != "failed" for s in report["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
