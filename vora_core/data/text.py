"""Ingest one text source into `text/<source>/part-*.parquet` (+ `rejects.parquet`).

File formats go through `conversations` (read, convert, validate). `llava` also copies each referenced
image into webdataset shards `shards/<source>/` with the download stage's shard writer, so the
`images` view (and the training loader's random access) sees them like downloaded images.
`shapes_vqa` builds VQA conversations about a synthetic_shapes source's downloaded training images
with the held-out benchmark's own question builder.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vora_core.catalog import Catalog, DownloadSettings, TextSource
from vora_core.data.conversations import IMAGE, PartWriter, Reject, convert, input_files, read_rows, row_id
from vora_core.errors import DataError
from vora_core.workdir import atomic_path

IMAGES_PER_SHARD = 10_000
DECODE_CHUNK = 512  # llava rows whose images are decoded side by side
ROW_SCHEMA = pa.schema([("key", pa.string()), ("row_id", pa.string()), ("url", pa.string()),
                        ("caption", pa.string()), ("status", pa.string()), ("error_message", pa.string()),
                        ("width", pa.int32()), ("height", pa.int32()), ("original_width", pa.int32()),
                        ("original_height", pa.int32()), ("sha256", pa.string())])


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
    """LLaVA images → `shards/<source>/NNNNN.tar` with the row table the `images` view reads.

    Each distinct file is stored once, decoded, checked, resized and re-encoded exactly as the download
    stage does (`process_image`: EXIF orientation, mode conversion, bomb limit, first frame of an
    animation): a file that fails is a row of the table with its status and error (view
    `download_failures`), never a tar member, and every conversation using it is rejected."""

    def __init__(self, shards_dir: Path, settings: DownloadSettings) -> None:
        self.dir, self.settings = shards_dir, settings
        self.shard, self.rows, self.writer = 0, [], None
        self.keys: dict[str, str | Reject] = {}  # LLaVA asks many questions about one image: once per file
        self.ready: dict[str, tuple[bytes, bytes | None, dict]] = {}  # rel → (file, encoded, row fields)

    def prepare(self, files: dict[str, Path], pool) -> None:
        """Decode the files not stored yet side by side (OpenCV and Pillow release the GIL)."""
        from vora_core.data.download import process_image

        def load(item: tuple[str, Path]) -> tuple[str, tuple[bytes, bytes | None, dict]]:
            data = item[1].read_bytes()
            return item[0], (data, *process_image(data, self.settings))

        new = [(rel, path) for rel, path in files.items() if rel not in self.keys and rel not in self.ready]
        self.ready.update(pool.map(load, new))

    def add(self, path: Path, rel: str) -> str:
        """Store the image (once per path); return its key (shard number + row), or raise its `Reject`."""
        from vora_core.data.download import process_image
        from vora_core.data.shards import ShardWriter

        if rel not in self.keys:
            if rel in self.ready:
                data, encoded, fields = self.ready.pop(rel)
            else:
                data = path.read_bytes()
                encoded, fields = process_image(data, self.settings)
            if self.writer is None:
                self.writer = ShardWriter(self.dir / f"{self.shard:05d}.tar")
            key = f"{self.shard:05d}{len(self.rows):05d}"
            row = {"key": key, "row_id": rel, "url": path.resolve().as_uri(), "caption": None, "width": None,
                   "height": None, "original_width": None, "original_height": None,
                   "sha256": hashlib.sha256(data).hexdigest(), **fields}
            self.rows.append(row)
            if encoded is None:
                self.keys[rel] = Reject("bad_image", f"{rel}: {fields['error_message']}")
            else:
                self.writer.write(key, {self.settings.encode_format: encoded, "json": {"key": key, "image": rel}})
                self.keys[rel] = key
            if len(self.rows) >= IMAGES_PER_SHARD:
                self.commit()
        found = self.keys[rel]
        if isinstance(found, Reject):
            raise found
        return found

    def commit(self) -> None:
        if self.writer is not None:
            self.writer.commit(pa.Table.from_pylist(self.rows, schema=ROW_SCHEMA))
            self.shard, self.rows, self.writer = self.shard + 1, [], None


def _llava(catalog: Catalog, name: str, src: TextSource, writer: PartWriter) -> None:
    image_dir = Path(src.image_dir or "")
    if not image_dir.is_dir():
        raise DataError(f"text_sources.{name}.image_dir: {image_dir} is not a directory")
    shards_dir = catalog.run.shards(name)
    with atomic_path(shards_dir) as tmp, ThreadPoolExecutor(max(1, catalog.download.processes_count)) as pool:
        tmp.mkdir(parents=True)
        shards = _ImageShards(tmp, catalog.download)
        rows = enumerate(read_rows(src))
        while chunk := list(itertools.islice(rows, DECODE_CHUNK)):
            # The chunk's images are decoded in parallel first; rows are then handled in order, so keys and
            # shards do not depend on the threads.
            shards.prepare({str(r["image"]): image_dir / str(r["image"]) for _, r in chunk
                            if isinstance(r, dict) and r.get("image") and (image_dir / str(r["image"])).is_file()},
                           pool)
            for n, row in chunk:
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
            shards.ready.clear()  # images of rows that were rejected before their image was needed
        shards.commit()
    # The tar paths in the shard row tables are relative to their folder, so the rename keeps them valid.


# ------------------------------------------------------------------------------------- shapes vqa


def conversation_order(asked: list[tuple[str, str, str]], layout: str, draw: int,
                       seed: str) -> list[tuple[str, str, str]]:
    """The turns of one shapes_vqa conversation from an image's (question, answer, kind) list.

    `shuffled`: all of them in a seeded order. `opening`: the draw-th question first (cycling through
    the list: multiple choice, yes/no, short answers), then the other short-answer questions in a seeded
    order. `single`: the draw-th question alone. A later multiple-choice or yes/no turn is given away by
    the earlier ones (the colour already named; of the two presence questions one is always yes, the
    other no), which evaluation never offers: under `opening` those are asked first or not at all."""
    if layout in ("single", "opening"):
        opening = asked[draw % len(asked)]
        if layout == "single":
            return [opening]
        rest = [q for q in asked if q[2] == "short" and q is not opening]
        random.Random(seed).shuffle(rest)
        return [opening, *rest]
    qa = list(asked)
    random.Random(seed).shuffle(qa)
    return qa


def _shapes_vqa(catalog: Catalog, src: TextSource, writer: PartWriter) -> None:
    """Per downloaded training image, `draws` multi-turn conversations in the held-out questions'
    formats; the first turn holds the image. `layout: shuffled` asks every question in a seeded order;
    `opening` opens the k-th conversation with the image's k-th question (cycling: multiple choice,
    yes/no, short answers) and follows it with the other short-answer questions only."""
    from vora_core.data.questions import KINDS, prompt_text, question_samples
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
        asked: dict[str, list[tuple[str, str, str]]] = {row["row_id"]: [] for row in labels}
        for kind in KINDS:  # all rows at once: the yes/no category alternates over rows, as in evaluation
            for s in question_samples(labels, lambda r: r["row_id"], kind, seed):
                asked[s.images[0]].append((prompt_text(s), str(s.answer), kind))
        for n, row in enumerate(labels):
            sid = f"{row['row_id']}/{draw}"
            try:
                image = images.get(row["row_id"])
                if image is None:
                    raise Reject("missing_image", f"{row['row_id']} was not downloaded")
                qa = conversation_order(asked[row["row_id"]], src.layout, draw, f"{seed}/{row['row_id']}")
                messages = []
                for i, (question, answer, _) in enumerate(qa):
                    text = question if i == 0 else question.removeprefix(IMAGE + "\n")
                    messages += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
                writer.add(sid, messages, image)
            except Reject as e:
                writer.reject(n, sid, e)
