"""The sample index: a mixture → one row per trainable sample, with its exact token length.

Packing needs every sample's length before the first batch, so the stage tokenises the mixture once
(in a process pool when it is large) and writes `samples.arrow` next to the run: an uncompressed
Arrow IPC file that every loader worker memory-maps (zero-copy, shared page cache), holding what a
worker needs to rebuild the sample: messages, the image's shard/key/size, the length and label count.
Samples that cannot train (see `vora_core.train.sequences`) are counted by reason in the stats; an
image missing from the manifest is `image_missing`.
"""

from __future__ import annotations

import glob
import json
import logging
import multiprocessing as mp
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from vora_core.errors import DataError
from vora_core.train.sequences import ChatEncoder, SkipSample, TokenSequence
from vora_core.train.transforms import apply_transform, image_tokens
from vora_core.workdir import RunDir, atomic_path

log = logging.getLogger(__name__)

INDEX_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("kind", pa.string()), ("messages", pa.string()), ("shard", pa.string()),
    ("key", pa.string()), ("height", pa.int32()), ("width", pa.int32()), ("length", pa.int32()),
    ("labels", pa.int32()), ("images", pa.int16()),
])
POOL_THRESHOLD = 20_000  # below this many samples a process pool costs more than it saves


@dataclass
class SampleBuilder:
    """Everything that turns one index row into tokens and pixels (picklable for loader workers)."""

    tokenizer: Any
    config: Any  # VoRAConfig: image geometry, normalisation, image_token_id
    transform: str
    seq_len: int
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if self.config.image_token_id is None:
            raise DataError("the model config has no image_token_id; the tokenizer needs an <|image_pad|> token")
        self.encoder = ChatEncoder(self.tokenizer, self.config.image_token_id, self.system_prompt)

    def image_tokens(self, height: int, width: int) -> int:
        return image_tokens(self.config, self.transform, height, width)

    def tokens(self, messages: list[dict], sizes: list[tuple[int, int]]) -> TokenSequence:
        """`sizes`: (height, width) of each image in order."""
        return self.encoder.build(messages, [self.image_tokens(h, w) for h, w in sizes], self.seq_len)

    def pixels(self, image) -> Any:
        return apply_transform(image, self.config, self.transform)


def mixture_files(mixture_dir: str | Path) -> list[str]:
    files = sorted(glob.glob(str(Path(mixture_dir) / "part-*.parquet")))
    if not files:
        raise DataError(f"no mixture files {Path(mixture_dir) / 'part-*.parquet'}; run the mix stage first")
    return files


def read_mixture(mixture_dir: str | Path, run: RunDir) -> pa.Table:
    """Mixture rows in file order with their messages (references resolved) and their image's shard, key
    and size from the manifest's `images` view."""
    from vora_core.data.text_views import complete_parts_sql, resolved_sql
    from vora_core.manifest import open_manifest

    files = mixture_files(mixture_dir)
    con = open_manifest(run)
    try:
        sources = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        parts = complete_parts_sql(f"read_parquet([{sources}], filename=true, file_row_number=true, "
                                   "union_by_name=true)")
        rows = resolved_sql(f"{parts} m",
                            ", i.source AS image_source, i.shard, i.key, i.width, i.height, "
                            "m.filename, m.file_row_number")
        sql = f"""
            SELECT sample_id, kind, image, messages, image_source AS source, shard, key, width, height
            FROM ({rows}) ORDER BY filename, file_row_number"""
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()


def _encode_rows(builder: SampleBuilder, rows: list[dict]) -> list[tuple[int, int, int] | str]:
    """Per row (length, labels, images) or the skip reason."""
    out: list[tuple[int, int, int] | str] = []
    for row in rows:
        try:
            if row["image"] is not None and row["key"] is None:
                raise SkipSample("image_missing")
            sizes = [(row["height"], row["width"])] if row["image"] is not None else []
            seq = builder.tokens(row["messages"], sizes)
            out.append((len(seq), seq.num_labels, seq.num_images))
        except SkipSample as e:
            out.append(e.reason)
    return out


_POOL_BUILDER: SampleBuilder | None = None


def _pool_init(builder: SampleBuilder) -> None:
    global _POOL_BUILDER
    _POOL_BUILDER = builder


def _pool_encode(rows: list[dict]) -> list[tuple[int, int, int] | str]:
    return _encode_rows(_POOL_BUILDER, rows)


def build_index(mixture_dir: str | Path, run: RunDir, builder: SampleBuilder, out_path: str | Path,
                workers: int = 1) -> dict:
    """Write `out_path` (Arrow IPC) and return its stats: samples, kept, skipped by reason, token counts."""
    table = read_mixture(mixture_dir, run)
    rows = table.select(["image", "messages", "key", "height", "width"]).to_pylist()
    if len(rows) >= POOL_THRESHOLD and workers > 1:
        chunk = 2000
        parts = [rows[i:i + chunk] for i in range(0, len(rows), chunk)]
        with mp.get_context("spawn").Pool(workers, initializer=_pool_init, initargs=(builder,)) as pool:
            results = [r for part in pool.imap(_pool_encode, parts) for r in part]
    else:
        results = _encode_rows(builder, rows)
    keep = np.asarray([not isinstance(r, str) for r in results], dtype=bool)
    skipped = Counter(r for r in results if isinstance(r, str))
    numbers = np.asarray([r for r in results if not isinstance(r, str)], dtype=np.int64).reshape(-1, 3)
    kept = table.filter(pa.array(keep))
    tars = [
        str(run.shards(s) / f"{sh}.tar") if s is not None else None
        for s, sh in zip(kept["source"].to_pylist(), kept["shard"].to_pylist(), strict=True)
    ]
    index = pa.table({
        "sample_id": kept["sample_id"].cast(pa.string()),
        "kind": kept["kind"].cast(pa.string()),
        "messages": pa.array([json.dumps(m, ensure_ascii=False) for m in kept["messages"].to_pylist()], pa.string()),
        "shard": pa.array(tars, pa.string()),
        "key": kept["key"].cast(pa.string()),
        "height": kept["height"].cast(pa.int32()),
        "width": kept["width"].cast(pa.int32()),
        "length": pa.array(numbers[:, 0], pa.int32()),
        "labels": pa.array(numbers[:, 1], pa.int32()),
        "images": pa.array(numbers[:, 2], pa.int16()),
    }, schema=INDEX_SCHEMA)
    with atomic_path(out_path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, INDEX_SCHEMA) as writer:
            writer.write_table(index)
    kinds = Counter(index["kind"].to_pylist())
    stats = {
        "samples": len(rows), "kept": int(keep.sum()), "skipped": int((~keep).sum()),
        "skipped_by_reason": dict(sorted(skipped.items())), "kept_by_kind": dict(sorted(kinds.items())),
        "tokens": int(numbers[:, 0].sum()), "label_tokens": int(numbers[:, 1].sum()),
        "images": int(numbers[:, 2].sum()),
    }
    if stats["skipped"]:
        log.warning("sample index: %d of %d samples skipped: %s", stats["skipped"], len(rows),
                    stats["skipped_by_reason"])
    if not stats["kept"]:
        raise DataError(f"no trainable sample in {mixture_dir} (skipped: {stats['skipped_by_reason']}); "
                        "check seq_len and the mixture")
    return stats


def open_index(path: str | Path) -> pa.Table:
    """Memory-map the index (zero-copy; workers share the page cache)."""
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
