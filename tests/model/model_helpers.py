"""Helpers shared by the model tests (unique module name: tests/ has no __init__ files)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

TEXTS = [
    f"The {color} {shape} number {i} sits at the {where} of a {size} picture."
    for i in range(120)
    for color, shape, where, size in [("red", "square", "top left", "small"), ("blue", "circle", "centre", "big")]
]


@dataclass
class Tiny:
    tokenizer: object
    llm_dir: Path
    teacher_dir: Path
    image_token_id: int


def make_vora(tiny: Tiny, attn: str = "sdpa", teacher: bool = True, **settings):
    from vora_core.model.modeling import VoRAForCausalLM

    settings = {"lora_rank": 4, "image_size": 32, "patch_size": 8, **settings}
    if not teacher:
        settings.setdefault("distill", "none")
    torch.manual_seed(0)
    model = VoRAForCausalLM.from_parts(tiny.llm_dir, tiny.teacher_dir if teacher else None,
                                       attn_implementation=attn, dtype=torch.float32, **settings)
    return model.eval()


@torch.no_grad()
def randomize_lora(model, scale: float = 0.05, seed: int = 0) -> None:
    """Give LoRA B non-zero values so LoRA actually changes the model."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if ".lora_B." in name:
            param.copy_(torch.randn(param.shape, generator=gen) * scale)


def image_run(tiny: Tiny, n: int) -> list[int]:
    return [tiny.image_token_id] * n
