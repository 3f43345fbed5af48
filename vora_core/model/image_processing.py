"""Images → normalised [3, H, W] tensors on the model's patch grid, and the saved image processor.

`preprocess_image` is the one transform the sequence builder, the evaluator and generation use:
the size comes from `VoRAConfig.image_grid` so the placeholder count always matches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vora_core.model.config import VoRAConfig


def preprocess_image(image: Image.Image, config: VoRAConfig) -> torch.Tensor:
    """RGB PIL image → float32 [3, rows·p, cols·p], resized (bicubic) and normalised with the config's mean/std."""
    rows, cols = config.image_grid(image.height, image.width)
    size = (cols * config.patch_size, rows * config.patch_size)  # PIL wants (width, height)
    image = image.convert("RGB")
    if image.size != size:
        image = image.resize(size, Image.Resampling.BICUBIC)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(config.image_mean).view(3, 1, 1)
    std = torch.tensor(config.image_std).view(3, 1, 1)
    return (pixels - mean) / std


def save_image_processor(config: VoRAConfig, out_dir: str | Path) -> None:
    """Write `preprocessor_config.json` (a CLIP image processor with the same size and statistics),
    so HF tooling can read the model's image settings; VoRA code itself uses `preprocess_image`."""
    from transformers import CLIPImageProcessor

    size = config.image_size
    processor = CLIPImageProcessor(
        size={"height": size, "width": size}, do_center_crop=False, image_mean=config.image_mean,
        image_std=config.image_std, resample=Image.Resampling.BICUBIC,
    )
    processor.save_pretrained(str(out_dir))
