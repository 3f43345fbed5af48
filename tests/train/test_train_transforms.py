"""Image transforms: token counts of `square` and `native`, pad colour, pixels on the patch grid."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from train_world import vora_config

from vora_core.errors import CatalogError
from vora_core.train.transforms import (
    apply_transform,
    check_transform,
    image_tokens,
    mean_colour,
    pad_to_square,
)


@pytest.mark.parametrize("size", [(32, 32), (20, 72), (72, 20), (500, 300), (9, 9)])
def test_square_is_always_the_full_grid(world, size):
    config, _ = vora_config(world, "square")
    w, h = size
    assert image_tokens(config, "square", h, w) == 16  # (32 / 8)²
    pixels = apply_transform(Image.new("RGB", size, (10, 200, 30)), config, "square")
    assert tuple(pixels.shape) == (3, 32, 32)


@pytest.mark.parametrize("size", [(32, 32), (20, 72), (72, 20), (500, 300), (9, 9), (200, 8)])
def test_native_keeps_aspect_within_the_cap(world, size):
    config, _ = vora_config(world, "native", max_image_tokens=20)
    w, h = size
    n = image_tokens(config, "native", h, w)
    pixels = apply_transform(Image.new("RGB", size), config, "native")
    rows, cols = pixels.shape[1] // 8, pixels.shape[2] // 8
    assert pixels.shape[1] % 8 == 0 and pixels.shape[2] % 8 == 0
    assert rows * cols == n <= 20
    if min(w, h) >= 16 and max(w, h) / min(w, h) < 4:  # no 1-patch clamp: the aspect survives rounding
        assert abs(cols / rows - w / h) / (w / h) < 0.5
    if w > h:
        assert cols >= rows


def test_native_counts_by_hand(world):
    config, _ = vora_config(world, "native", max_image_tokens=20)
    assert image_tokens(config, "native", 16, 16) == 4  # small images are not upscaled: 2 × 2
    assert config.image_grid(24, 48) == (3, 6)  # fits the cap as is: 18 tokens
    assert config.image_grid(40, 80) == (3, 6)  # 5 × 10 = 50 > 20: scaled by √(20/50), rounded
    assert config.image_grid(800, 10) == (20, 1)  # extreme aspect: one column, capped at 20 rows


def test_square_pads_with_the_mean_colour(world):
    config, _ = vora_config(world, "square")
    fill = mean_colour(config)
    assert fill == (123, 117, 104)  # AIMv2/CLIP mean × 255, rounded
    padded = pad_to_square(Image.new("RGB", (40, 10), (255, 0, 0)), fill)
    arr = np.asarray(padded)
    assert padded.size == (40, 40)
    assert tuple(arr[0, 0]) == fill and tuple(arr[39, 39]) == fill
    assert tuple(arr[20, 20]) == (255, 0, 0)  # the image is centred: rows 15..24


def test_transform_must_match_the_model(world):
    config, _ = vora_config(world, "square")
    check_transform(config, "square")
    with pytest.raises(CatalogError, match="model.transform='native' needs a model with image_resize='native'"):
        check_transform(config, "native")
