"""A small generated training world for the train tests: shards with images, a mixture, tiny models.

Everything goes through the real formats: images in a webdataset shard with its tar index and row
table (so the manifest's `images` view sees them), mixture parquet rows, HF model directories.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from vora_core.workdir import RunDir

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40)}
SHAPES = ("circle", "square")


@dataclass
class World:
    root: Path
    run: RunDir
    llm: Path
    teacher: Path
    mixture: Path
    n_samples: int


def shape_image(rng: random.Random, min_side: int = 20, max_side: int = 72) -> tuple[Image.Image, str, str]:
    w, h = rng.randint(min_side, max_side), rng.randint(min_side, max_side)
    colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
    img = Image.new("RGB", (w, h), (128, 128, 128))
    r = min(w, h) * 0.3
    box = [w / 2 - r, h / 2 - r, w / 2 + r, h / 2 + r]
    draw = ImageDraw.Draw(img)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
    return img, colour, shape


def write_shard(run: RunDir, source: str, images: list[tuple[str, Image.Image]]) -> None:
    import io

    from vora_core.data.shards import ShardWriter

    rows = []
    with ShardWriter(run.shards(source) / "00000.tar") as writer:
        for key, img in images:
            buf = io.BytesIO()
            img.save(buf, "PNG")
            writer.write(key, {"png": buf.getvalue(), "json": {"key": key}})
            rows.append({"key": key, "row_id": key, "url": f"file:///{key}.png", "caption": None, "status": "success",
                         "error_message": None, "width": img.width, "height": img.height,
                         "original_width": img.width, "original_height": img.height, "sha256": None})
        writer.commit(pa.Table.from_pylist(rows))


def conversations(rng: random.Random, keys: list[tuple[str, str, str]], n_text: int) -> list[dict]:
    rows = []
    for key, colour, shape in keys:
        sid = f"shapes/{key}"
        rows.append({"sample_id": f"cap-{key}", "kind": "caption", "source": "shapes", "image": sid,
                     "weight_source": "shapes",
                     "messages": [{"role": "user", "content": "<image>\nDescribe the image."},
                                  {"role": "assistant", "content": f"A {colour} {shape} on a grey background."}]})
        rows.append({"sample_id": f"vqa-{key}", "kind": "vqa", "source": "shapes", "image": sid,
                     "weight_source": "shapes",
                     "messages": [{"role": "user", "content": "<image>\nWhat colour is the shape?"},
                                  {"role": "assistant", "content": colour.capitalize() + "."},
                                  {"role": "user", "content": "And its shape?"},
                                  {"role": "assistant", "content": shape.capitalize() + "."}]})
    for i in range(n_text):
        words = " ".join(rng.choice(["one", "two", "three", "red", "blue", "shape"]) for _ in range(rng.randint(3, 40)))
        rows.append({"sample_id": f"text-{i}", "kind": "text", "source": "text", "image": None,
                     "weight_source": "text",
                     "messages": [{"role": "system", "content": "You count."},
                                  {"role": "user", "content": f"Repeat: {words}"},
                                  {"role": "assistant", "content": words}]})
    rng.shuffle(rows)
    return rows


def make_world(root: Path, n_images: int = 16, n_text: int = 16, seed: int = 0, image_size: int = 32,
               patch_size: int = 8, hidden: int = 32, layers: int = 2) -> World:
    from vora_core.model.tiny import build_tiny_llm, build_tiny_teacher, train_tokenizer

    rng = random.Random(seed)
    run = RunDir(root / "run").ensure()
    images, keys = [], []
    for i in range(n_images):
        img, colour, shape = shape_image(rng)
        key = f"{i:09d}"
        images.append((key, img))
        keys.append((key, colour, shape))
    write_shard(run, "shapes", images)
    rows = conversations(rng, keys, n_text)
    mixture = run.mixture("pretrain")
    mixture.mkdir(parents=True, exist_ok=True)
    half = len(rows) // 2
    for part, chunk in enumerate((rows[:half], rows[half:])):
        pq.write_table(pa.Table.from_pylist(chunk), mixture / f"part-{part:05d}.parquet")
    texts = [m["content"] for r in rows for m in r["messages"]] * 3
    tokenizer = train_tokenizer(texts, vocab_size=400)
    llm = build_tiny_llm(root / "models" / "llm", tokenizer, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=1, intermediate_size=2 * hidden, seed=seed)
    teacher = build_tiny_teacher(root / "models" / "teacher", image_size=image_size, patch_size=patch_size,
                                 hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                                 intermediate_size=32, seed=seed + 1)
    return World(root, run, llm, teacher, mixture, len(rows))


def vora_config(world: World, transform: str = "square", **fields):
    """The VoRA config a pretrain run on `world` uses (no weights loaded)."""
    from transformers import AutoTokenizer

    from vora_core.catalog import ModelSettings
    from vora_core.train.prepare import model_config, pretrain_fields

    settings = ModelSettings(**{"image_size": 32, "patch_size": 8, "lora_rank": 4, "transform": transform, **fields})
    tok = AutoTokenizer.from_pretrained(str(world.llm))
    f = pretrain_fields(settings, str(world.teacher), tok.convert_tokens_to_ids("<|image_pad|>"))
    return model_config({"init": "parts", "llm": str(world.llm), "teacher": str(world.teacher), "fields": f}), f
