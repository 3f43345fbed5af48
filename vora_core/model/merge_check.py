"""The merge stage's mechanism (vora_core.stages.merge): fold the pretrained LoRA into the LLM, then
prove the merge with a probe batch.

`vora_core.model.merge.merge_lora` writes the merged directory (fp32 math, streamed) under
a temporary name; a fixed probe batch (seeded images + text, and a text-only row) then runs through
the unmerged and the merged model, both loaded in float32, and the largest absolute logit difference
over real (non-padding) positions is compared with the allowed bound:

* float32 storage: `tolerance` (1e-5) × the probe's largest |logit| (at least 1): fp32 rounding grows
  with the logits, which a trained LLM makes large (measured: an exact merge 1.8e-5 off where the logits reach 9.9).
* bfloat16 / float16 storage: rounding the weights is a real change, so the bound is measured on the
  model itself: `low_precision_factor` × the difference that rounding the *unmerged* model's weights
  (LoRA factors excluded) to the storage dtype already causes on the same probe, + the fp32 bound. A
  correct merge rounds about as many weights by about as much, so it lands near 1× that floor; a
  wrong merge (missing, doubled or misplaced LoRA delta) lands far above it.

Only a merge within the bound is renamed into place (`merged/`), followed by its marker
(`merged.done.json`) holding the difference, the bound and the probe's shape; otherwise a
`StageError` with the numbers. Models are loaded one at a time, so memory stays at one model.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vora_core.catalog import MergeSettings
from vora_core.errors import ModelError, StageError
from vora_core.model.merge import merge_lora
from vora_core.workdir import atomic_path

log = logging.getLogger(__name__)



# ------------------------------------------------------------------------------------------ probe


def probe_images(config, n: int, seed: int) -> list[Image.Image]:
    """Seeded images: smooth colour fields with noise; in native-resolution mode of varied aspect."""
    rng = np.random.default_rng(seed)
    images = []
    for k in range(n):
        h = w = config.image_size
        if config.image_resize == "native":
            w = max(config.patch_size, config.image_size * (k + 2) // 3)  # 2/3, 1, 4/3, ... of the side
        base = rng.uniform(0, 255, size=(1, 1, 3))
        grad = np.linspace(0, 1, w)[None, :, None] * rng.uniform(-120, 120, size=(1, 1, 3))
        noise = rng.normal(0, 30, size=(h, w, 3))
        images.append(Image.fromarray(np.clip(base + grad + noise, 0, 255).astype(np.uint8), "RGB"))
    return images


def probe_batch(model_dir: Path, config, settings: MergeSettings) -> dict[str, Any]:
    """input_ids / attention_mask (left-padded) / pixel_values of the probe: one row per image + a
    text-only row, encoded with the model's own tokenizer and chat template."""
    from transformers import AutoTokenizer

    from vora_core.eval.chat import user_text
    from vora_core.eval.prompts import PromptEncoder, left_pad

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as e:
        raise ModelError(f"{model_dir} has no usable tokenizer for the merge probe ({e})") from None
    encoder = PromptEncoder(tokenizer, config)
    rows, pixels = [], []
    for image in probe_images(config, settings.probe_images, settings.probe_seed):
        enc = encoder.encode(user_text(settings.probe_text, 1), [image])
        rows.append(enc.input_ids)
        pixels += enc.pixel_values
    rows.append(encoder.encode(user_text(settings.probe_text, 0), []).input_ids)
    ids, mask = left_pad(rows, encoder.pad_id())
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


@torch.no_grad()
def probe_logits(model, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    """Logits at the real (non-padding) positions, float32 on the CPU: [tokens, vocab]."""
    model.to(device).eval()
    out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                pixel_values=[p.to(device) for p in batch["pixel_values"]] or None, distill=False)
    return out.logits[batch["attention_mask"].to(device).bool()].float().cpu()


def _free(model) -> None:
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@torch.no_grad()
def _round_weights(model, dtype: torch.dtype) -> None:
    """Round every floating weight except the LoRA factors to `dtype` (kept in float32)."""
    for name, param in model.named_parameters():
        if ".lora_" not in name and param.is_floating_point():
            param.copy_(param.to(dtype).float())
    for buffer in model.buffers():
        if buffer.is_floating_point():
            buffer.copy_(buffer.to(dtype).float())


def check_merge(pretrain_dir: Path, merged_dir: Path, settings: MergeSettings) -> dict[str, Any]:
    """Probe the unmerged and merged models; the stats, with `passed` and the `bound` used."""
    from vora_core.model.device import resolve_device
    from vora_core.model.modeling import load_vora

    device = resolve_device(settings.device)
    started = time.perf_counter()
    model = load_vora(pretrain_dir, dtype=torch.float32)
    batch = probe_batch(pretrain_dir, model.config, settings)
    reference = probe_logits(model, batch, device)
    _free(model)
    merged = load_vora(merged_dir, dtype=torch.float32)
    if merged.config.lora_rank > 0 or merged.teacher is not None:
        raise StageError(f"merge: {merged_dir} still has LoRA or a teacher; the merge did not produce a plain model")
    diff = (probe_logits(merged, batch, device) - reference).abs().max().item()
    _free(merged)
    # fp32 rounding grows with the logits' size: the tolerance is per unit of the probe's largest |logit|
    # (a trained LLM's logits reach tens; a lost or doubled LoRA delta is orders of magnitude above)
    scale = max(1.0, reference.abs().max().item())
    bound = settings.tolerance * scale
    floor = None
    if settings.dtype != "float32":
        rounded = load_vora(pretrain_dir, dtype=torch.float32)
        _round_weights(rounded, getattr(torch, settings.dtype))
        floor = (probe_logits(rounded, batch, device) - reference).abs().max().item()
        _free(rounded)
        bound = settings.low_precision_factor * floor + settings.tolerance * scale
    passed = bool(np.isfinite(diff) and diff <= bound)
    return {
        "max_abs_logit_diff": diff, "bound": bound, "rounding_floor": floor, "passed": passed,
        "dtype": settings.dtype, "probe_rows": int(batch["input_ids"].shape[0]),
        "probe_tokens": int(batch["attention_mask"].sum()), "probe_images": len(batch["pixel_values"]),
        "max_abs_logit": reference.abs().max().item(), "probe_seconds": round(time.perf_counter() - started, 3),
    }


def merge_and_check(pretrain_dir: str | Path, out_dir: str | Path, settings: MergeSettings | None = None) -> dict:
    """Merge `pretrain_dir` into `out_dir` and verify it; `out_dir` appears only if the check passes."""
    settings = settings or MergeSettings()
    src, out = Path(pretrain_dir), Path(out_dir)
    if not (src / "config.json").exists():
        raise StageError(f"merge: {src} is not a model directory (no config.json); run the pretrain stage first "
                         "or set merge.source")
    started = time.perf_counter()
    with atomic_path(out) as tmp:
        merge_lora(src, tmp, dtype=settings.dtype)
        merge_seconds = time.perf_counter() - started
        stats = check_merge(src, tmp, settings)
        if not stats["passed"]:
            raise StageError(
                f"merge: merged model differs from the unmerged one by {stats['max_abs_logit_diff']:.3g} "
                f"(max abs logit) on the probe, above the bound {stats['bound']:.3g} for {settings.dtype} storage; "
                f"the merge is wrong — {out} was not written"
            )
    log.info("merge %s → %s: max |logit diff| %.3g ≤ %.3g", src, out, stats["max_abs_logit_diff"], stats["bound"])
    return {**stats, "source": str(src), "merge_seconds": round(merge_seconds, 3)}
