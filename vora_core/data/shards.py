"""Webdataset shards: an atomic writer, a tar index (key → byte offset) and random-access readers.

A shard is `NNNNN.tar` (webdataset: `<key>.jpg`, `<key>.json`, `<key>.txt`), `NNNNN.idx.parquet`
(one row per tar member: key, ext, offset, size) and `NNNNN.parquet` (one row per input row,
successes and failures, with status and error). The parquet is moved into place last: the manifest
reads only parquet files, so a shard it sees is complete.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from vora_core.data.images import open_rgb
from vora_core.errors import DataError
from vora_core.workdir import atomic_path

INDEX_SCHEMA = pa.schema([("key", pa.string()), ("ext", pa.string()), ("offset", pa.int64()), ("size", pa.int64())])


def index_path(tar_path: str | Path) -> Path:
    tar_path = Path(tar_path)
    return tar_path.with_name(tar_path.stem + ".idx.parquet")


def build_index(tar_path: str | Path) -> pa.Table:
    """Scan a tar once: each member's key, extension, data offset and size."""
    rows: dict[str, list] = {"key": [], "ext": [], "offset": [], "size": []}
    with tarfile.open(tar_path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.partition(".")
            rows["key"].append(key)
            rows["ext"].append(ext)
            rows["offset"].append(member.offset_data)
            rows["size"].append(member.size)
    return pa.table(rows, schema=INDEX_SCHEMA)


def write_index(tar_path: str | Path, out: str | Path | None = None) -> Path:
    out = Path(out) if out else index_path(tar_path)
    with atomic_path(out) as tmp:
        pq.write_table(build_index(tar_path), tmp)
    return out


class ShardWriter:
    """Write samples to a temporary tar, then move tar, index and row table into place in that order.

    Use as a context manager; on an exception nothing becomes visible.
    """

    def __init__(self, tar_path: str | Path):
        self.tar_path = Path(tar_path)
        self.tar_path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.tar_path.with_name(f".{self.tar_path.name}.tmp-{os.getpid()}")
        self._tar = tarfile.open(self._tmp, "w:", format=tarfile.USTAR_FORMAT)
        self.keys: list[str] = []

    def write(self, key: str, files: dict[str, bytes | str | dict]) -> None:
        """`files`: extension → content (bytes; str as UTF-8; dict as JSON)."""
        if "." in key or "/" in key:
            raise DataError(f"shard key {key!r} must not contain '.' or '/'")
        for ext, content in files.items():
            if isinstance(content, dict):
                content = json.dumps(content, ensure_ascii=False, default=str)
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mode = 0o444
            self._tar.addfile(info, io.BytesIO(data))
        self.keys.append(key)

    def commit(self, rows: pa.Table, stats: dict | None = None) -> None:
        """Finish: tar and its index, then the stats json, then the row table last."""
        self._tar.close()
        index = build_index(self._tmp)
        os.replace(self._tmp, self.tar_path)
        with atomic_path(index_path(self.tar_path)) as tmp:
            pq.write_table(index, tmp)
        if stats is not None:
            with atomic_path(self.tar_path.with_name(self.tar_path.stem + "_stats.json")) as tmp:
                tmp.write_text(json.dumps(stats, indent=2, sort_keys=True))
        with atomic_path(self.tar_path.with_suffix(".parquet")) as tmp:
            pq.write_table(rows, tmp)

    def abort(self) -> None:
        self._tar.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or not self._tar.closed:
            self.abort()


class ShardReader:
    """Random access to one shard's samples through its index (no tar scan)."""

    def __init__(self, tar_path: str | Path):
        self.tar_path = Path(tar_path)
        idx = index_path(self.tar_path)
        if not idx.exists():
            raise DataError(f"{idx}: tar index missing; rebuild it with vora_core.data.shards.write_index")
        table = pq.read_table(idx).to_pydict()
        self._where: dict[str, dict[str, tuple[int, int]]] = {}
        for key, ext, offset, size in zip(table["key"], table["ext"], table["offset"], table["size"], strict=True):
            self._where.setdefault(key, {})[ext] = (offset, size)
        self._file = open(self.tar_path, "rb")  # noqa: SIM115 - closed by close()/__exit__

    def keys(self) -> list[str]:
        return list(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def exts(self, key: str) -> list[str]:
        return list(self._entry(key))

    def _entry(self, key: str) -> dict[str, tuple[int, int]]:
        try:
            return self._where[key]
        except KeyError:
            raise DataError(f"{self.tar_path}: no sample with key {key!r}") from None

    def read(self, key: str, ext: str) -> bytes:
        entry = self._entry(key)
        if ext not in entry:
            raise DataError(f"{self.tar_path}: sample {key!r} has no .{ext} (has: {', '.join(entry)})")
        offset, size = entry[ext]
        self._file.seek(offset)
        data = self._file.read(size)
        if len(data) != size:
            raise DataError(f"{self.tar_path}: truncated at sample {key!r}")
        return data

    def image_bytes(self, key: str) -> bytes:
        entry = self._entry(key)
        for ext in ("jpg", "jpeg", "png", "webp"):
            if ext in entry:
                return self.read(key, ext)
        raise DataError(f"{self.tar_path}: sample {key!r} has no image (has: {', '.join(entry)})")

    def image(self, key: str) -> Image.Image:
        return open_rgb(self.image_bytes(key))

    def meta(self, key: str) -> dict:
        return json.loads(self.read(key, "json")) if "json" in self._entry(key) else {}

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_samples(tar_path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Sequential read of a tar: (key, {ext: bytes}) per sample, in file order."""
    with tarfile.open(tar_path, "r:") as tar:
        key, files = None, {}
        for member in tar:
            if not member.isfile():
                continue
            k, _, ext = member.name.partition(".")
            if k != key and key is not None:
                yield key, files
                files = {}
            key = k
            files[ext] = tar.extractfile(member).read()
        if key is not None:
            yield key, files
