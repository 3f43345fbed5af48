"""The released VoRA recaption parquet: `id` (string), the image as `frames` (a list of encoded images,
the first one the picture) or `image` (`struct<bytes: binary, path: string>`, the Hugging Face
`Image` feature), and `conversations` (`[{from, value}]`: the caption request, then the caption as
the assistant turn)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from realdata import photos

TURN = pa.struct([("from", pa.string()), ("value", pa.string())])
REQUEST = "<image>\nDescribe the image in detail."


def conversations(caption: str) -> list[dict]:
    return [{"from": "human", "value": REQUEST}, {"from": "gpt", "value": caption}]


def write_recap(path: Path, items: list[tuple[str, bytes, str]], image_form: str = "frames") -> Path:
    """`items`: (id, encoded image, caption); `image_form`: `frames` or `image`."""
    ids = [i for i, _, _ in items]
    convs = pa.array([conversations(c) for _, _, c in items], pa.list_(TURN))
    if image_form == "frames":
        image = pa.array([[data] for _, data, _ in items], pa.list_(pa.binary()))
    else:
        image = pa.array([{"bytes": data, "path": f"{i}.jpg"} for i, data, _ in items],
                         pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": pa.array(ids, pa.string()), image_form: image, "conversations": convs}), path)
    return path


CAPTIONS = {
    "astronaut.png": "A smiling astronaut in a white spacesuit holds a helmet in front of an American flag.",
    "chelsea.png": "A tabby cat with green eyes lies on a wooden floor and looks to the left.",
    "coffee.png": "A white cup of coffee with latte art sits on a saucer on a red table.",
    "rocket.jpg": "A rocket stands on its launch pad under a clear blue sky.",
}


def recap_items(names: list[str] | None = None) -> list[tuple[str, bytes, str]]:
    """Real photographs with their captions, ids like the release's (`recap-<n>`)."""
    names = names or list(CAPTIONS)
    return [(f"recap-{n:08d}", photos.jpeg(name), CAPTIONS[name]) for n, name in enumerate(names)]
