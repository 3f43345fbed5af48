"""Tiny VoRA models for the evaluation tests, built once per session from configs (no downloads)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from vora_core.data.sources import COLOURS, POSITIONS, SHAPES

TEXTS = [
    f"A {size} {colour} {shape} in the {pos} of a grey background. What colour is the shape? Is there a "
    f"{colour} {shape} in the image? Answer the question using a single word or phrase. Yes No"
    for size in ("small", "large") for colour in COLOURS for shape in SHAPES for pos in POSITIONS[:2]
]


@pytest.fixture(scope="session")
def tiny_eval(tmp_path_factory) -> dict[str, Path]:
    """{"llm", "teacher", "pretrain" (LoRA with non-zero B, distillation heads, teacher), "vora" (no teacher)}."""
    from transformers import AutoTokenizer

    from vora_core.model.modeling import VoRAForCausalLM, save_vora
    from vora_core.model.tiny import build_tiny_llm, build_tiny_teacher, train_tokenizer

    root = tmp_path_factory.mktemp("tiny-eval")
    tokenizer = train_tokenizer(TEXTS, vocab_size=320)
    llm = build_tiny_llm(root / "llm", tokenizer, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                         tie_word_embeddings=False)  # untied: a random model says varied things
    teacher = build_tiny_teacher(root / "teacher", image_size=32, patch_size=8, num_hidden_layers=2)
    tokenizer = AutoTokenizer.from_pretrained(str(llm))
    dirs = {"llm": llm, "teacher": teacher}
    for name, teacher_dir in (("pretrain", teacher), ("vora", None)):
        torch.manual_seed(0)
        extra = {} if teacher_dir else {"distill": "none"}
        model = VoRAForCausalLM.from_parts(llm, teacher_dir, dtype=torch.float32, lora_rank=4, image_size=32,
                                           patch_size=8, **extra)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for pname, param in model.named_parameters():
                if ".lora_B." in pname:  # a LoRA that changes the model, so a wrong merge shows
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
        dirs[name] = save_vora(model, root / name, tokenizer)
    return dirs


def png(path: Path | None = None, colour=(200, 10, 10)) -> bytes:
    """A tiny PNG's bytes, also written to `path` when given (benchmark files' images)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buf, "PNG")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
    return buf.getvalue()
