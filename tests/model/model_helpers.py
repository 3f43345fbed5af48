"""Helpers shared by the model tests (unique module name: tests/ has no __init__ files)."""

from __future__ import annotations

import random
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


def packed_batch(tiny, rng: random.Random, length: int) -> dict:
    """Two packed rows of `length` tokens: one 16-token image sample first, then text documents."""
    def words(n: int) -> list[int]:
        return [t if t != tiny.image_token_id else 11 for t in (rng.randrange(10, 250) for _ in range(n))]

    rows, docs, labels, images = [], [], [], []
    for _ in range(2):
        row = [3] + image_run(tiny, 16) + words(rng.randint(3, 9))
        lab = [-100] * 17 + row[17:]
        doc = [0] * len(row)
        images.append(torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(rng.randrange(10**6))))
        d = 1
        while len(row) < length:
            text = words(rng.randint(4, 15))[: length - len(row)]
            row, lab, doc = row + text, lab + [-100] + text[1:], doc + [d] * len(text)
            d += 1
        rows.append(row)
        labels.append(lab)
        docs.append(doc)
    return {"input_ids": torch.tensor(rows), "labels": torch.tensor(labels), "doc_ids": torch.tensor(docs),
            "pixel_values": images}
