"""Ingest one text source into `text/<source>/part-*.parquet` (+ `rejects.parquet`).

File formats go through `conversations` (read, convert, validate). `llava` also copies each referenced
image into webdataset shards `shards/<source>/` with the download stage's shard writer, so the
`images` view (and the training loader's random access) sees them like downloaded images.
`shapes_vqa` builds VQA conversations about a synthetic_shapes source's downloaded training images
with the held-out benchmark's own question builder.
"""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vora_core.catalog import Catalog, TextSource
from vora_core.data.conversations import IMAGE, PartWriter, Reject, convert, input_files, read_rows, row_id
from vora_core.errors import DataError
from vora_core.workdir import atomic_path

IMAGES_PER_SHARD = 10_000


def ingest(catalog: Catalog, name: str, out_dir: Path) -> dict:
    """Write the source's canonical conversations into `out_dir` and return the counts."""
    src = catalog.text_sources[name]
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = PartWriter(out_dir, name, catalog.mix.rows_per_part)
    if src.format == "shapes_vqa":
        _shapes_vqa(catalog, src, writer)
    elif src.format == "llava":
        _llava(catalog, name, src, writer)
    else:
        columns: dict[str, None] = {}  # every key seen, in order of first appearance
        for n, row in enumerate(read_rows(src)):
            sid = None
            try:
                if isinstance(row, Reject):
                    raise row
                columns.update(dict.fromkeys(row))
                sid = row_id(row, src, n)
                writer.add(sid, convert(row, src))
            except Reject as e:
                writer.reject(n, sid, e)
        if columns:
            _require_columns(src, name, list(columns))
    return writer.close()


def _require_columns(src: TextSource, name: str, found: list[str]) -> None:
    """A configured column that no row holds is a catalog mistake, not a reason to reject every row."""
    needed: dict[str, str | None] = {
        "sharegpt": {"conversations": src.conversations_col},
        "messages": {"messages": src.messages_col},
        "prompt_response": {"prompt": src.prompt_col, "response": src.response_col, "context": src.context_col,
                            "system": src.system_col},
    }[src.format] | {"id": src.id_col}
    for role, col in needed.items():
        if col and col not in found:
            files = input_files(src.path or "")
            raise DataError(f"{files[0] if len(files) == 1 else src.path}: no {role} column {col!r} in any row; "
                            f"columns found: {', '.join(found)} (set `{role}_col` in text_sources.{name})")


# ------------------------------------------------------------------------------------------ llava


class _ImageShards:
    """LLaVA images → `shards/<source>/NNNNN.tar` with the row table the `images` view reads."""

    def __init__(self, shards_dir: Path) -> None:
        self.dir = shards_dir
        self.shard, self.rows, self.writer = 0, [], None
        self.keys: dict[str, str] = {}  # LLaVA asks many questions about one image: store it once

    def add(self, path: Path, rel: str) -> str:
        """Store the image (once per path); return its key (shard number + row)."""
        from PIL import Image

        from vora_core.data.shards import ShardWriter

        if rel in self.keys:
            return self.keys[rel]
        data = path.read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                ext = (img.format or "jpeg").lower().replace("jpeg", "jpg")
        except Exception as e:  # noqa: BLE001 - any decoder error means the file is not an image
            raise Reject("missing_image", f"{rel}: unreadable ({e})") from None
        if self.writer is None:
            self.writer = ShardWriter(self.dir / f"{self.shard:05d}.tar")
        key = f"{self.shard:05d}{len(self.rows):05d}"
        self.writer.write(key, {ext: data, "json": {"key": key, "image": rel}})
        self.rows.append({"key": key, "row_id": rel, "url": path.resolve().as_uri(), "caption": None,
                          "status": "success", "error_message": None, "width": width, "height": height,
                          "original_width": width, "original_height": height,
                          "sha256": hashlib.sha256(data).hexdigest()})
        self.keys[rel] = key
        if len(self.rows) >= IMAGES_PER_SHARD:
            self.commit()
        return key

    def commit(self) -> None:
        if self.writer is not None:
            self.writer.commit(pa.Table.from_pylist(self.rows))
            self.shard, self.rows, self.writer = self.shard + 1, [], None


def _llava(catalog: Catalog, name: str, src: TextSource, writer: PartWriter) -> None:
    image_dir = Path(src.image_dir or "")
    if not image_dir.is_dir():
        raise DataError(f"text_sources.{name}.image_dir: {image_dir} is not a directory")
    shards_dir = catalog.run.shards(name)
    with atomic_path(shards_dir) as tmp:
        tmp.mkdir(parents=True)
        shards = _ImageShards(tmp)
        for n, row in enumerate(read_rows(src)):
            sid = None
            try:
                if isinstance(row, Reject):
                    raise row
                sid = row_id(row, src, n)
                messages = convert(row, src)
                image = None
                if row.get("image"):
                    path = image_dir / str(row["image"])
                    if not path.is_file():
                        raise Reject("missing_image", str(row["image"]))
                    image = f"{name}/{shards.add(path, str(row['image']))}"
                writer.add(sid, messages, image)
            except Reject as e:
                writer.reject(n, sid, e)
        shards.commit()
    # The tar paths in the shard row tables are relative to their folder, so the rename keeps them valid.


# ------------------------------------------------------------------------------------- shapes vqa


def _shapes_vqa(catalog: Catalog, src: TextSource, writer: PartWriter) -> None:
    """Per downloaded training image, `draws` multi-turn conversations asking every held-out question
    kind in a seeded order; the first turn holds the image."""
    from vora_core.eval.formats import prompt_text
    from vora_core.eval.heldout import KINDS, question_samples
    from vora_core.manifest import open_manifest

    name = src.source or ""
    labels_file = catalog.run.sources(name) / "labels.parquet"
    if not labels_file.exists():
        raise DataError(f"{labels_file} not found; run the download stage for source {name!r} first")
    labels = pq.read_table(labels_file).to_pylist()
    con = open_manifest(catalog.run, memory_limit=catalog.mix.memory_limit, threads=catalog.mix.threads)
    try:
        images = dict(con.execute("SELECT row_id, sample_id FROM images WHERE source = ? AND status = 'success'",
                                  [name]).fetchall())
    finally:
        con.close()
    for draw in range(src.draws):
        seed = catalog.seed * 1000 + draw
        asked: dict[str, list[tuple[str, str]]] = {row["row_id"]: [] for row in labels}
        for kind in KINDS:  # all rows at once: the yes/no category alternates over rows, as in evaluation
            for s in question_samples(labels, lambda r: r["row_id"], kind, seed):
                asked[s.images[0]].append((prompt_text(s), str(s.answer)))
        for n, row in enumerate(labels):
            sid = f"{row['row_id']}/{draw}"
            try:
                image = images.get(row["row_id"])
                if image is None:
                    raise Reject("missing_image", f"{row['row_id']} was not downloaded")
                qa = list(asked[row["row_id"]])
                random.Random(f"{seed}/{row['row_id']}").shuffle(qa)
                messages = []
                for i, (question, answer) in enumerate(qa):
                    text = question if i == 0 else question.removeprefix(IMAGE + "\n")
                    messages += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
                writer.add(sid, messages, image)
            except Reject as e:
                writer.reject(n, sid, e)
