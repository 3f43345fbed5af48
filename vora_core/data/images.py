"""Safe image decoding: any common file → an RGB PIL image, or a `DataError` with the reason.

Handles what real web images throw at a pipeline: EXIF orientation, CMYK, palette and LA/RGBA
(alpha matted on white), 16-bit and 32-bit grey, truncated or zero-byte files, HTML error pages
served as images, and decompression bombs (checked from the header, before any pixel is decoded).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from vora_core.errors import DataError

# Pillow's own bomb guard is disabled: our check reads the size from the header first and says why.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's default limit


def _sniff(data: bytes) -> str:
    head = data[:256].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        return "not an image (HTML/XML body)"
    return "not an image (unrecognised format)"


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # Scale the full range down to 8 bits; a plain convert() would clip to 255.
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray(np.clip(arr * (255.0 / hi), 0, 255).round().astype(np.uint8), "L")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        span = max(float(arr.max() - arr.min()), 1e-12)
        img = Image.fromarray(((arr - arr.min()) * (255.0 / span)).round().astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("LA", "PA", "RGBA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def open_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None) -> Image.Image:
    """Decode `data` to an upright RGB image. `draft_size` lets JPEG decode at a reduced scale when
    the caller will shrink the image to about that longer side anyway (much faster for big photos)."""
    if not data:
        raise DataError("empty file (zero bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DataError(_sniff(data)) from None
    except Exception as e:  # noqa: BLE001 - any decoder error is a bad image
        raise DataError(f"unreadable image header: {e}") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise DataError(f"invalid image size {width}x{height}")
    if width * height > max_pixels:
        raise DataError(f"decompression bomb: {width}x{height} = {width * height} pixels > limit {max_pixels}")
    try:
        if draft_size and img.format == "JPEG" and max(width, height) > 2 * draft_size:
            scale = draft_size / max(width, height)
            img.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
            img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated data, corrupt streams, ...
        raise DataError(f"corrupt or truncated image: {e}") from None


def resize_longest(img: Image.Image, size: int, only_if_bigger: bool = True) -> Image.Image:
    """keep_ratio_largest: the longer side becomes `size` (never below 1 px on the shorter side)."""
    w, h = img.size
    longest = max(w, h)
    if longest == size or (only_if_bigger and longest <= size):
        return img
    scale = size / longest
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img.resize(new, Image.Resampling.BICUBIC, reducing_gap=3.0 if scale < 1 else None)


def encode(img: Image.Image, fmt: str = "jpg", quality: int = 95) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        img.save(buf, "JPEG", quality=quality)
    elif fmt == "png":
        img.save(buf, "PNG")
    elif fmt == "webp":
        img.save(buf, "WEBP", quality=quality)
    else:
        raise DataError(f"unknown encode format {fmt!r}; use jpg, png or webp")
    return buf.getvalue()


def resize(img: Image.Image, mode: str, size: int, only_if_bigger: bool = True) -> Image.Image:
    """img2dataset's resize modes, applied to an upright RGB image."""
    if mode == "no":
        return img
    if mode == "keep_ratio_largest":
        return resize_longest(img, size, only_if_bigger)
    if mode == "border":
        img = resize_longest(img, size, only_if_bigger)
        canvas = Image.new("RGB", (max(size, img.width), max(size, img.height)), (255, 255, 255))
        canvas.paste(img, ((canvas.width - img.width) // 2, (canvas.height - img.height) // 2))
        return canvas
    if mode in ("keep_ratio", "center_crop"):
        w, h = img.size
        shortest = min(w, h)
        if not (only_if_bigger and shortest <= size) and shortest != size:
            scale = size / shortest
            img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
        if mode == "center_crop":
            w, h = img.size
            left, top = max(0, (w - size) // 2), max(0, (h - size) // 2)
            img = img.crop((left, top, left + min(size, w), top + min(size, h)))
        return img
    raise DataError(f"unknown resize mode {mode!r}")
