"""Pretraining the demo's tiny teacher: a seeded AIMv2 tower learns to classify generated shape pictures.

VoRA distils a pretrained ViT's block features into the LLM's first blocks; the paper's AIMv2 brings
web-scale pretraining with it. A random tiny teacher has nothing to distil, so with
`model.tiny.teacher_pretrain_images > 0` the demo's teacher first learns, for about a minute on CPU,
what is in its kind of picture — the shape, its colour, where it is, the background's colour — from
pictures drawn by the synthetic source's generator under a seed of its own (never the run's training
or held-out pictures). The four linear heads are thrown away; the tower is what the teacher keeps.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vora_core.catalog import SyntheticShapesSource
from vora_core.data.sources import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, synthetic_shape
from vora_core.train.transforms import pad_to_square

log = logging.getLogger(__name__)

LABELS = {"shape": list(SHAPES), "colour": list(COLOURS), "position": list(POSITIONS),
          "background": list(BACKGROUNDS)}
VALIDATION = 500  # pictures kept aside to report the teacher's accuracy (a quarter of `images` if fewer)
SEED_OFFSET = 7919  # the pictures' seed: the source's seed + this (not the run's pictures)


def shape_pictures(src: SyntheticShapesSource, n: int, image_size: int, mean: list[float],
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` generated pictures padded and resized as the `square` transform does (uint8 [n, 3, s, s]: 37 KiB
    each at 112 px, normalised per batch) and their labels [n, 4]."""
    rng = random.Random(seed)
    fill = tuple(int(round(255 * m)) for m in mean)
    pixels = np.empty((n, image_size, image_size, 3), np.uint8)
    labels = np.empty((n, len(LABELS)), np.int64)
    for i in range(n):
        image, meta = synthetic_shape(rng, src.min_side, src.max_side, src.shape_scale)
        square = pad_to_square(image, fill).resize((image_size, image_size), Image.Resampling.BICUBIC)
        pixels[i] = np.asarray(square)
        labels[i] = [names.index(meta[key]) for key, names in LABELS.items()]
    return torch.from_numpy(pixels).permute(0, 3, 1, 2), torch.from_numpy(labels)


def _normalise(pixels: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    return (pixels.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def pretrain_teacher(teacher_dir: str | Path, src: SyntheticShapesSource, images: int, epochs: int, lr: float,
                     batch_size: int = 64, seed: int = 0, on_epoch: Callable[[int, int], None] | None = None) -> dict:
    """Train the AIMv2 tower saved in `teacher_dir` in place; returns its stats (validation accuracy per label).
    `on_epoch(done, epochs)` follows the progress."""
    from transformers import Aimv2VisionModel

    teacher_dir = Path(teacher_dir)
    processor = json.loads((teacher_dir / "preprocessor_config.json").read_text())
    model = Aimv2VisionModel.from_pretrained(teacher_dir)
    size = model.config.image_size
    t0 = time.perf_counter()
    mean, std = processor["image_mean"], processor["image_std"]
    x, y = shape_pictures(src, images + min(VALIDATION, max(images // 4, 1)), size, mean, src.seed + SEED_OFFSET)
    torch.manual_seed(seed)
    width = model.config.hidden_size
    heads = torch.nn.ModuleList(torch.nn.Linear(width, len(names)) for names in LABELS.values())
    optimizer = torch.optim.AdamW([*model.parameters(), *heads.parameters()], lr=lr)
    total = epochs * -(-images // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=0.1)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(images)
        for start in range(0, images, batch_size):
            batch = order[start:start + batch_size]
            pooled = model(pixel_values=_normalise(x[batch], mean, std)).last_hidden_state.mean(1)
            loss = sum(torch.nn.functional.cross_entropy(head(pooled), y[batch, k]) for k, head in enumerate(heads))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        log.info("tiny teacher pretraining: epoch %d/%d, loss %.3f", epoch + 1, epochs, loss.item())
        if on_epoch is not None:
            on_epoch(epoch + 1, epochs)
    model.eval()
    with torch.no_grad():
        pooled = model(pixel_values=_normalise(x[images:], mean, std)).last_hidden_state.mean(1)
        accuracy = {name: round((head(pooled).argmax(-1) == y[images:, k]).float().mean().item(), 4)
                    for k, (name, head) in enumerate(zip(LABELS, heads, strict=True))}
    model.save_pretrained(teacher_dir)
    stats = {"images": images, "epochs": epochs, "seconds": round(time.perf_counter() - t0, 1),
             "validation_accuracy": accuracy}
    log.info("tiny teacher pretrained: %s", stats)
    return stats
