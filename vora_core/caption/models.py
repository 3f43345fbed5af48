"""Which captioner a run uses: a hub name, a local directory, or `tiny` — the seeded random Qwen2-VL
captioner built once into `<workdir>/models/captioner` (the demo's; same loading code as a real one)."""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

from vora_core.catalog import DEFAULT_CAPTION_PROMPTS, Catalog, TinyCaptionerSettings

log = logging.getLogger(__name__)

TINY = "tiny"


def tiny_model_dir(catalog: Catalog) -> Path:
    return catalog.run.models / "captioner"


def build_tiny_captioner(out: str | Path, tiny: TinyCaptionerSettings, seed: int = 0) -> Path:
    """Build the tiny captioner into `out` (atomically; a directory already there is kept)."""
    out = Path(out)
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        _build(tmp, tiny, seed)
        os.rename(tmp, out)  # fails if another process renamed its build first: keep theirs
        log.info("built the tiny captioner in %s", out)
    except OSError:
        if not (out / "config.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# Text the tiny tokenizer learns from: caption words, so its random captions are made of words.
_TOKENIZER_TEXT = [
    *DEFAULT_CAPTION_PROMPTS,
    "The image shows a red circle and a blue square on a white background.",
    "A green triangle sits above a small yellow star in the upper left corner of the picture.",
    "There are two purple ellipses next to an orange rectangle, with a grey line below them.",
]
# vora_core.model.tiny initialises like transformers (std 0.02): a captioner that small then answers
# every image with one repeated token (an empty caption). Ten times wider weights (std 0.2) make its
# answers depend on the image and the prompt, so the stages after recaption see varied text.
WEIGHT_SCALE = 10.0


def _build(out: Path, tiny: TinyCaptionerSettings, seed: int) -> None:
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from vora_core.model.tiny import build_tiny_captioner as build
    from vora_core.model.tiny import train_tokenizer

    tokenizer = train_tokenizer(_TOKENIZER_TEXT * 4, vocab_size=tiny.vocab_size, seed=seed)
    build(out, tokenizer, hidden_size=tiny.hidden_size, num_hidden_layers=tiny.layers,
          intermediate_size=2 * tiny.hidden_size, vision_depth=tiny.vision_depth,
          vision_embed_dim=tiny.vision_width, vision_heads=max(1, tiny.vision_width // 16), seed=seed)
    model = Qwen2VLForConditionalGeneration.from_pretrained(out)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:  # matrices, embeddings, the patch convolution; not norms or biases
                param.mul_(WEIGHT_SCALE)
    model.save_pretrained(out)


def resolve_model(catalog: Catalog) -> str:
    """The model the engine loads (building the tiny captioner first if the catalog asks for it)."""
    s = catalog.recaption
    if s.model != TINY:
        return s.model
    return str(build_tiny_captioner(tiny_model_dir(catalog), s.tiny, seed=catalog.seed))


def model_identity(catalog: Catalog) -> object:
    """What identifies the weights, for the fingerprint: tiny's settings, a local directory's files
    (name, size, mtime), or the hub name."""
    s = catalog.recaption
    if s.model == TINY:
        return [TINY, s.tiny.model_dump(), catalog.seed]
    path = Path(s.model)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".safetensors") and p.is_file())
        return [str(path.resolve()), [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]]
    return s.model
