"""Training image transforms: `square` (the paper's) and `native` (AnyRes), on the model's patch grid.

* `square`: pad the image to a square with the mean colour (as LLaVA does), then resize to
  `image_size`² — every image is `(image_size / patch_size)²` tokens. Needs `image_resize="fixed"`.
* `native`: keep the aspect ratio; sides are multiples of the patch size and the token count is at
  most `max_image_tokens` (`VoRAConfig.image_grid`). Needs `image_resize="native"`.

Pixels are normalised with the model config's mean/std, which the pretrain stage copies from the
teacher's image processor; the teacher receives the same tensor (resized to its own input size if
that differs), so student and teacher see the same pixels.
"""

from __future__ import annotations

from typing import Literal

import torch
from PIL import Image

from vora_core.errors import CatalogError

Transform = Literal["square", "native"]
RESIZE_OF = {"square": "fixed", "native": "native"}


def check_transform(config, transform: str) -> None:
    """The model's `image_resize` must be the one the transform implies (the count depends on it)."""
    if transform not in RESIZE_OF:
        raise CatalogError(f"model.transform={transform!r} is not 'square' or 'native'")
    if config.image_resize != RESIZE_OF[transform]:
        raise CatalogError(
            f"model.transform={transform!r} needs a model with image_resize={RESIZE_OF[transform]!r}, but this "
            f"model has image_resize={config.image_resize!r}; set model.transform to "
            f"{'native' if config.image_resize == 'native' else 'square'}"
        )


def mean_colour(config) -> tuple[int, int, int]:
    r, g, b = (int(round(255 * m)) for m in config.image_mean)
    return r, g, b


def pad_to_square(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    """Centre the image on a square canvas of its longer side filled with `fill`."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def image_tokens(config, transform: str, height: int, width: int) -> int:
    """Placeholder tokens an image of `height`×`width` pixels takes under `transform`."""
    if transform == "square":
        side = max(height, width)
        return config.num_image_tokens(side, side)
    return config.num_image_tokens(height, width)


def apply_transform(image: Image.Image, config, transform: str) -> torch.Tensor:
    """RGB image → normalised float32 [3, rows·p, cols·p]."""
    from vora_core.model.image_processing import preprocess_image

    image = image.convert("RGB")
    if transform == "square":
        image = pad_to_square(image, mean_colour(config))
    return preprocess_image(image, config)
