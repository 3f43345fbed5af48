"""Fixtures of the recaption tests: a tiny Qwen2-VL captioner, shards written with the real shard
writer, catalogs, and an OpenAI-compatible server on 127.0.0.1 serving the hf engine."""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image, ImageDraw

from vora_core.catalog import Catalog, parse_catalog
from vora_core.data.shards import ShardWriter

# Small enough for 2 CPU cores: images of at most 56x56 px are 4 image tokens.
# One torch thread: two collapse when other processes keep the 2 cores busy (see engines._threads).
RECAPTION = {"batch_size": 4, "max_new_tokens": 8, "min_pixels": 784, "max_pixels": 56 * 56,
             "concurrency_limit": None, "cpu_threads": 1}


def shape_image(i: int, size: tuple[int, int] = (48, 40)) -> bytes:
    rng = random.Random(i)
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    x0, y0 = rng.randrange(size[0] // 2), rng.randrange(size[1] // 2)
    draw.ellipse([x0, y0, x0 + size[0] // 3, y0 + size[1] // 3], fill=tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_shard(root: Path, source: str, shard: int, images: dict[str, bytes]) -> Path:
    """A shard as the download stage writes it: tar (+ json, txt), tar index, row table."""
    tar = root / "shards" / source / f"{shard:05d}.tar"
    rows = []
    with ShardWriter(tar) as writer:
        for key, data in images.items():
            writer.write(key, {"jpg": data, "json": {"key": key}, "txt": f"alt text {key}"})
            rows.append({"key": key, "row_id": key, "url": f"file:///{key}.jpg", "caption": f"alt text {key}",
                         "status": "success", "error_message": None, "width": 48, "height": 40,
                         "original_width": 48, "original_height": 40,
                         "sha256": hashlib.sha256(data).hexdigest()})
        schema = pa.schema([("key", pa.string()), ("row_id", pa.string()), ("url", pa.string()),
                            ("caption", pa.string()), ("status", pa.string()), ("error_message", pa.string()),
                            ("width", pa.int32()), ("height", pa.int32()), ("original_width", pa.int32()),
                            ("original_height", pa.int32()), ("sha256", pa.string())])
        writer.commit(pa.Table.from_pylist(rows, schema=schema), {"count": len(rows)})
    return tar


def make_shards(root: Path, source: str = "shapes", n_shards: int = 2, per_shard: int = 3, start: int = 0) -> int:
    n = 0
    for s in range(n_shards):
        images = {f"{s:05d}{i:04d}": shape_image(start + s * 100 + i) for i in range(per_shard)}
        write_shard(root, source, s, images)
        n += len(images)
    return n


def make_catalog(root: Path, model: str, **recaption) -> Catalog:
    return parse_catalog({
        "name": "captest", "workdir": str(root),
        "sources": {"shapes": {"kind": "synthetic_shapes", "n": 4, "heldout": 0}},
        "recaption": {"model": model, **RECAPTION, **recaption},
    })


def build_test_captioner(out: Path) -> Path:
    """A seeded random Qwen2-VL captioner (the stage's own `tiny` builder makes the same kind)."""
    from vora_core.caption.models import build_tiny_captioner
    from vora_core.catalog import TinyCaptionerSettings

    return build_tiny_captioner(out, TinyCaptionerSettings(), seed=0)


@pytest.fixture(scope="session")
def captioner_dir(tmp_path_factory) -> Path:
    return build_test_captioner(tmp_path_factory.mktemp("captioner") / "captioner")


@pytest.fixture
def shards():
    """`shards(root, ...)`: write shards with the real shard writer; returns the image count."""
    return make_shards


@pytest.fixture
def shard():
    """`shard(root, source, index, {key: bytes})`: one shard with the given images."""
    return write_shard


@pytest.fixture
def catalog():
    """`catalog(root, model, **recaption)`: a small catalog whose workdir is `root`."""
    return make_catalog


@pytest.fixture
def image():
    """`image(i)`: a small JPEG of a shape, different for each i."""
    return shape_image
