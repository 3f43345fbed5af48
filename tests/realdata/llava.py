"""LLaVA-665K (`llava_v1_5_mix665k.json`) as published: a JSON array of
`{"id", "image"?, "conversations": [{"from": "human"|"gpt", "value"}]}` rows, images relative to the
image folder under `coco/train2017/`, `gqa/images/`, `ocr_vqa/images/`, `textvqa/train_images/` and
`vg/VG_100K(_2)/`.

Its real quirks, all here: one COCO image has several rows under the same `id` (a conversation, a
detailed description, a VQA row), text-only ShareGPT rows have no `image` key (and an empty `model`),
OCR-VQA holds GIFs named `.jpg`, and a real download of the images holds a few broken files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from realdata import photos


def _conv(*turns: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)]


# (id, image path or None, conversations); the COCO id 000000033471 repeats, as in the real file.
ROWS = [
    ("000000033471", "coco/train2017/000000033471.jpg",
     _conv("What is the man in the image wearing?\n<image>", "He is wearing a white space suit.",
           "What is behind him?", "A flag of the United States.")),
    ("000000033471", "coco/train2017/000000033471.jpg",
     _conv("<image>\nDescribe the following image.", "An astronaut in a white suit poses in front of a flag.")),
    ("000000033471", "coco/train2017/000000033471.jpg",
     _conv("<image>\nIs the person smiling?\nAnswer the question using a single word or phrase.", "Yes")),
    ("i6IyJda_0", None, _conv("Summarize the main ideas of Jeff Walker's Product Launch Formula.",
                              "It is a step-by-step approach to launching a product online.")),
    ("2354786", "gqa/images/2354786.jpg",
     _conv("<image>\nWhat animal is lying on the floor?\nAnswer the question using a single word or phrase.",
           "Cat")),
    ("140031996", "ocr_vqa/images/140031996.jpg",  # a GIF named .jpg
     _conv("<image>\nWho wrote this book?", "Unknown", "Is this a comedy book?", "No")),
    ("0054c91397f2fe05", "textvqa/train_images/0054c91397f2fe05.jpg",  # EXIF Orientation 6
     _conv("<image>\nWhat does the rocket say?\nReference OCR token: USA", "USA")),
    ("000000000009", "coco/train2017/000000000009.jpg",
     _conv("<image>\nWhat drink is in the cup?", "Coffee.")),
    ("oJ2kVbT_12", None, _conv("Write a haiku about rain.", "Soft rain on the roof / ...")),
    ("000000000009", "coco/train2017/000000000009.jpg",
     _conv("Describe the cup.\n<image>", "A white cup of coffee on a saucer.")),
]
# The broken files of a real download, each used by the rows listed in BROKEN_ROWS.
BROKEN = [
    ("1400319961", "ocr_vqa/images/1400319961.jpg", "truncated"),
    ("1400319961", "ocr_vqa/images/1400319961.jpg", "truncated"),  # two rows, one truncated file
    ("2400001", "vg/VG_100K_2/2400001.jpg", "bomb"),
    ("2400002", "vg/VG_100K_2/2400002.png", "144mpx"),
]


@dataclass
class LlavaSet:
    json_path: Path
    image_dir: Path
    rows: list[dict]
    images: dict[str, str]  # image path → what it is (photo name or broken kind)


def _image_files(broken: bool) -> dict[str, bytes]:
    files = {
        "coco/train2017/000000033471.jpg": photos.jpeg("astronaut.png"),
        "gqa/images/2354786.jpg": photos.jpeg("chelsea.png"),
        "ocr_vqa/images/140031996.jpg": photos.gif_bytes(),
        "textvqa/train_images/0054c91397f2fe05.jpg": photos.exif_rotated_jpeg("rocket.jpg")[0],
        "coco/train2017/000000000009.jpg": photos.jpeg("coffee.png"),
    }
    if broken:
        files |= {"ocr_vqa/images/1400319961.jpg": photos.truncated_jpeg("motorcycle_left.png"),
                  "vg/VG_100K_2/2400001.jpg": photos.bomb_png(),
                  "vg/VG_100K_2/2400002.png": photos.png_144mpx()}
    return files


def write_llava(root: Path, broken: bool = True) -> LlavaSet:
    """`root/llava_v1_5_mix665k.json` and `root/images/...`; with `broken`, four more rows (at the end)
    whose three files cannot be used."""
    image_dir = root / "images"
    for rel, data in _image_files(broken).items():
        (image_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (image_dir / rel).write_bytes(data)
    rows = []
    for sid, image, conv in ROWS + ([(i, p, _conv("<image>\nWhat is this?", "A picture.")) for i, p, _ in BROKEN]
                                    if broken else []):
        row: dict = {"id": sid}
        if image is None:
            row["model"] = ""
        else:
            row["image"] = image
        rows.append(row | {"conversations": conv})
    path = root / "llava_v1_5_mix665k.json"
    path.write_text(json.dumps(rows, indent=1))
    kinds = {p: k for _, p, k in BROKEN} if broken else {}
    return LlavaSet(path, image_dir, rows, {r["image"]: kinds.get(r["image"], "photo") for r in rows if "image" in r})
