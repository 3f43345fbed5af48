"""The download stage: sources → url partitions → img2dataset → webdataset shards with a tar index.

Units:
* prepare (one per source): url lists `sources/<source>/urls-PPPPP.parquet` of `rows_per_unit` rows,
  rows rejected before download in `sources/<source>/rejects.parquet`, counts in `prepared.json`.
* download (one per source × partition): img2dataset fetches the partition's bytes into a temporary
  folder (its process pool, its retries, its sha256 check); then every image is decoded safely
  (EXIF orientation, CMYK, palette, alpha, 16-bit, bombs — see `images.py`), resized and re-encoded,
  and written as shard `P*S + i` (S = shards per unit) so shard numbers never depend on run order.

img2dataset's own decoder reads pixels with OpenCV's IMREAD_UNCHANGED, which ignores EXIF
orientation and clips 16-bit images; it is therefore asked for the original bytes
(`disable_all_reencoding`) and the decoding happens here, once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from vora_core.catalog import Catalog, DownloadSettings
from vora_core.data import images, sources
from vora_core.data.failures import classify
from vora_core.data.shards import ShardReader, ShardWriter, write_index
from vora_core.errors import DataError, StageError
from vora_core.workdir import (
    Unit,
    atomic_path,
    atomic_write_json,
    files_identity,
    remove_stale_temporaries,
)

log = logging.getLogger(__name__)

# Settings that change what a unit writes (parallelism and timeouts do not).
OUTPUT_SETTINGS = (
    "image_size", "resize_mode", "resize_only_if_bigger", "encode_format", "encode_quality", "min_image_size",
    "max_aspect_ratio", "max_image_area", "retries", "timeout", "number_sample_per_shard", "rows_per_unit",
    "user_agent_token", "disallowed_header_directives",
)


def output_settings(settings: DownloadSettings) -> dict:
    return {k: getattr(settings, k) for k in OUTPUT_SETTINGS}


def input_signature(src) -> list:
    """Files a source reads (size + mtime): editing an input file re-prepares the source."""
    paths: list[str] = []
    for attr in ("path", "train_csv", "clean_csv", "label_to_category_csv"):
        value = getattr(src, attr, None)
        if value:
            paths += sources.expand(value, f"{src.kind} source")
    return files_identity(paths, full_path=True)


# ------------------------------------------------------------------------------------------- prepare


def prepare_source(catalog: Catalog, unit: Unit) -> dict:
    """Read a source into url partitions (`sources/<name>/urls-*.parquet`) and its rejects."""
    name = unit.params["source"]
    src = catalog.sources[name]
    out_dir = catalog.run.sources(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in [*out_dir.glob("urls-*.parquet"), out_dir / "rejects.parquet"]:
        old.unlink(missing_ok=True)
    remove_stale_temporaries(out_dir, ".*.tmp-*")  # the folder is this unit's alone
    con = sources.connect()
    try:
        if src.kind == "synthetic_shapes":
            prepared = sources.synthetic_rows(src, out_dir, con)
        elif src.kind == "url_list":
            prepared = sources.url_list_rows(src, con)
        elif src.kind == "datacomp":
            prepared = sources.datacomp_rows(src, con)
        elif src.kind == "gldv2":
            prepared = sources.gldv2_rows(src, con)
        else:
            prepared = sources.parquet_images_rows(src, con)
    finally:
        con.close()
    per_unit = catalog.download.rows_per_unit
    rows = prepared.rows
    partitions = 0
    for start in range(0, rows.num_rows, per_unit):
        with atomic_path(out_dir / f"urls-{partitions:05d}.parquet") as tmp:
            pq.write_table(rows.slice(start, per_unit), tmp)
        partitions += 1
    with atomic_path(out_dir / "rejects.parquet") as tmp:
        pq.write_table(prepared.rejects, tmp)
    reasons = Counter(prepared.rejects.column("reason").to_pylist())
    stats = {
        "source": name, "kind": src.kind, "rows": rows.num_rows, "partitions": partitions,
        "rejected": dict(reasons), "filtered": prepared.filtered, "extras": prepared.extras,
        "input_rows": rows.num_rows + sum(reasons.values()) + sum(prepared.filtered.values()),
    }
    atomic_write_json(unit.output, stats)
    return stats


# ---------------------------------------------------------------------------------------- download


def download_partition(catalog: Catalog, unit: Unit) -> dict:
    """Download one url partition into webdataset shards (img2dataset, or the parquet's own bytes)."""
    name, index = unit.params["source"], unit.params["index"]
    src = catalog.sources[name]
    settings = catalog.download
    shards_dir = catalog.run.shards(name)
    shards_dir.mkdir(parents=True, exist_ok=True)
    per_unit_shards = settings.rows_per_unit // settings.number_sample_per_shard
    _clean_stale(shards_dir, index, range(index * per_unit_shards, (index + 1) * per_unit_shards))
    tmp = shards_dir / f".unit-{index:05d}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    started = time.perf_counter()
    try:
        rows = pq.read_table(unit.params["partition"])
        first_shard = index * per_unit_shards
        if src.kind == "parquet_images":
            results = _shards_from_parquet(src, rows, shards_dir, first_shard, settings)
        else:
            extras = json.loads((catalog.run.sources(name) / "prepared.json").read_text())["extras"]
            results = []
            _run_img2dataset(
                rows, tmp, settings, extras, verify=getattr(src, "verify_sha256", False),
                on_shard=lambda raw: results.append(_finalize_raw(raw, shards_dir, first_shard, settings, extras)),
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results.sort(key=lambda r: r["shard"])
    seconds = time.perf_counter() - started
    statuses: Counter = Counter()
    reasons: Counter = Counter()
    for r in results:
        statuses.update(r["statuses"])
        reasons.update(r["reasons"])
    stats = {
        "source": name, "partition": index, "rows": rows.num_rows, "shards": [r["shard"] for r in results],
        "successes": statuses.get("success", 0), "failures": rows.num_rows - statuses.get("success", 0),
        "failures_by_reason": dict(reasons), "seconds": round(seconds, 3),
        "images_per_s": round(rows.num_rows / seconds, 2) if seconds > 0 else None,
    }
    if sum(statuses.values()) != rows.num_rows:
        raise StageError(f"download {unit.id}: {rows.num_rows} rows in, {sum(statuses.values())} accounted for")
    atomic_write_json(unit.output, stats)
    return stats


def _clean_stale(shards_dir: Path, index: int, shards: range) -> None:
    """Remove temporaries of an earlier, killed attempt — its folders (stopping its img2dataset if that
    lives on) and its half-written shard files — before the unit is redone."""
    for shard in shards:
        remove_stale_temporaries(shards_dir, f".{shard:05d}[._]*.tmp-*")
    for old in shards_dir.glob(f".unit-{index:05d}.tmp-*"):
        pid_file = old / "child.pgid"
        if pid_file.exists():
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, PermissionError, ValueError):
                pass
        shutil.rmtree(old, ignore_errors=True)


def _run_img2dataset(rows: pa.Table, tmp: Path, settings: DownloadSettings, extras: list[str],
                     verify: bool, on_shard: Callable[[Path], None]) -> None:
    """Fetch the partition's original bytes with img2dataset in a child process group, calling
    `on_shard(raw_parquet)` for each raw shard as soon as img2dataset has finished it — so decoding
    here overlaps with downloading there."""
    url_list = tmp / "urls.parquet"
    pq.write_table(rows, url_list)
    out = tmp / "raw"
    kwargs = {
        "url_list": str(url_list), "input_format": "parquet", "url_col": "url", "caption_col": "caption",
        "output_format": "webdataset", "output_folder": str(out), "image_size": settings.image_size,
        "processes_count": settings.processes_count, "thread_count": settings.thread_count,
        "number_sample_per_shard": settings.number_sample_per_shard, "timeout": settings.timeout,
        "retries": settings.retries, "disable_all_reencoding": True, "extract_exif": False,
        "save_additional_columns": ["row_id", *[c for c in extras if c != "sha256"]],
        "compute_hash": "sha256", "verify_hash": ["sha256", "sha256"] if verify else None,
        "distributor": settings.distributor, "incremental_mode": "incremental", "enable_wandb": False,
        "user_agent_token": settings.user_agent_token,
        "disallowed_header_directives": settings.disallowed_header_directives, "max_shard_retry": 1,
    }
    args = tmp / "img2dataset.json"
    args.write_text(json.dumps(kwargs))
    log_path = tmp / "img2dataset.log"
    with open(log_path, "w") as logf:
        child = subprocess.Popen(
            [sys.executable, "-m", "vora_core.data.img2dataset_child", str(args)],
            cwd=tmp, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"},
        )
        (tmp / "child.pgid").write_text(str(child.pid))
        deadline = time.monotonic() + settings.unit_timeout_s
        seen: set[str] = set()
        try:
            while True:
                rc = child.poll()
                # img2dataset writes NNNNN_stats.json after closing that shard's tar and parquet.
                for stats in sorted(out.glob("*_stats.json")):
                    shard_id = stats.name.split("_")[0]
                    if shard_id not in seen:
                        seen.add(shard_id)
                        on_shard(out / f"{shard_id}.parquet")
                if rc is not None:
                    break
                if time.monotonic() > deadline:
                    raise StageError(
                        f"img2dataset did not finish within download.unit_timeout_s="
                        f"{settings.unit_timeout_s:g}s (a server that never ends its response?); "
                        f"raise the limit or check the urls"
                    )
                time.sleep(0.1)
        finally:
            try:  # its pool workers share the group: never leave one behind
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            child.wait()
    if rc != 0:
        tail = log_path.read_text()[-2000:]
        raise StageError(f"img2dataset exited with code {rc}:\n{tail}")


def process_image(data: bytes | None, settings: DownloadSettings) -> tuple[bytes | None, dict]:
    """Decode, check, resize, encode one image (the download stage, llava and parquet_images alike).
    Returns (bytes or None, row fields)."""
    try:
        arr = images.decode_bgr(data or b"", max_pixels=settings.max_image_area,
                                draft_size=settings.image_size if settings.resize_mode != "no" else None)
    except DataError as e:
        return None, {"status": "failed_to_decode", "error_message": str(e)}
    oh, ow = arr.shape[:2]
    if min(ow, oh) < settings.min_image_size:
        return None, {"status": "failed_to_resize", "error_message": "image too small",
                      "original_width": ow, "original_height": oh}
    if settings.max_aspect_ratio and max(ow, oh) / min(ow, oh) > settings.max_aspect_ratio:
        return None, {"status": "failed_to_resize", "error_message": "aspect ratio too large",
                      "original_width": ow, "original_height": oh}
    arr = images.resize_bgr(arr, settings.resize_mode, settings.image_size, settings.resize_only_if_bigger)
    encoded = images.encode_bgr(arr, settings.encode_format, settings.encode_quality)
    h, w = arr.shape[:2]
    return encoded, {"status": "success", "error_message": None, "width": w, "height": h,
                     "original_width": ow, "original_height": oh}


def _write_shard(tar_path: Path, items: list[dict], settings: DownloadSettings) -> dict:
    """`items`: row dicts in key order, each with `key`, `_bytes` (or None) and row fields."""
    # OpenCV and Pillow release the GIL while decoding, resizing and encoding: threads scale.
    with ThreadPoolExecutor(max_workers=max(1, settings.processes_count)) as pool:
        processed = list(pool.map(
            lambda it: process_image(it["_bytes"], settings) if it["status"] is None else (None, {}), items))
    statuses: Counter = Counter()
    reasons: Counter = Counter()
    records = []
    with ShardWriter(tar_path) as writer:
        for item, (encoded, fields) in zip(items, processed, strict=True):
            row = {k: v for k, v in item.items() if k != "_bytes"}
            row.update(fields)
            if encoded is not None:
                meta = {k: v for k, v in row.items() if v is not None}
                files = {settings.encode_format: encoded, "json": meta}
                if row.get("caption") is not None:
                    files["txt"] = str(row["caption"])
                writer.write(row["key"], files)
            else:
                reasons[classify(row["error_message"] or row["status"])] += 1
            statuses[row["status"]] += 1
            records.append(row)
        table = pa.Table.from_pylist(records, schema=_row_schema(records))
        shard_stats = {"count": len(records), "successes": statuses.get("success", 0),
                       "failures_by_reason": dict(reasons)}
        writer.commit(table, shard_stats)
    return {"shard": tar_path.stem, "statuses": statuses, "reasons": reasons}


def _row_schema(records: list[dict]) -> pa.Schema:
    fixed = {"key": pa.string(), "row_id": pa.string(), "url": pa.string(), "caption": pa.string(),
             "status": pa.string(), "error_message": pa.string(), "width": pa.int32(), "height": pa.int32(),
             "original_width": pa.int32(), "original_height": pa.int32(), "sha256": pa.string()}
    extra = [k for k in dict.fromkeys(k for r in records for k in r) if k not in fixed]
    inferred = pa.Table.from_pylist([{k: r.get(k) for k in extra} for r in records]).schema if extra else []
    # A column with no value in this shard (no recaption, say) is text, not Arrow's null type.
    return pa.schema([*fixed.items(), *[(f.name, pa.string() if pa.types.is_null(f.type) else f.type)
                                        for f in inferred]])


def _key(shard: int, row: int, settings: DownloadSettings) -> str:
    width = max(4, len(str(settings.number_sample_per_shard - 1)))
    return f"{shard:05d}{row:0{width}d}"


def _finalize_raw(raw_parquet: Path, shards_dir: Path, first_shard: int, settings: DownloadSettings,
                  extras: list[str]) -> dict:
    """Turn one raw img2dataset shard (original bytes) into the final shard `first_shard + its id`."""
    # img2dataset's key is 10**ceil(log10(samples per shard)) * shard id + row within the shard.
    oom = math.ceil(math.log10(settings.number_sample_per_shard))
    raw_tar = raw_parquet.with_suffix(".tar")
    shard = first_shard + int(raw_parquet.stem)
    table = pq.read_table(raw_parquet).to_pylist()
    write_index(raw_tar)
    items = []
    with ShardReader(raw_tar) as reader:
        for r in sorted(table, key=lambda r: int(r["key"])):
            ok = r["status"] == "success"
            items.append({
                "key": _key(shard, int(r["key"]) % (10 ** oom), settings), "row_id": r.get("row_id"),
                "url": r.get("url"), "caption": r.get("caption"), "status": None if ok else r["status"],
                "error_message": None if ok else r.get("error_message"),
                "width": None, "height": None, "original_width": None, "original_height": None,
                "sha256": r.get("sha256"), **{c: r.get(c) for c in extras if c != "sha256"},
                "_bytes": reader.image_bytes(r["key"]) if ok else None,
            })
    return _write_shard(shards_dir / f"{shard:05d}.tar", items, settings)


def _image_bytes(value) -> bytes | None:
    """Image column of a parquet_images source: bytes, {bytes: ...}, or a list of those (frames)."""
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    if isinstance(value, dict):
        value = value.get("bytes")
    return value


def _shards_from_parquet(src, rows: pa.Table, shards_dir: Path, first_shard: int,
                         settings: DownloadSettings) -> list[dict]:
    """parquet_images: the bytes are already local — read them and write shards directly."""
    con = duckdb.connect()
    con.register("wanted", rows.select(["row_id", "file", "file_row"]))
    cols = [src.image_col] + [c for c in (src.caption_col, src.conversations_col) if c]
    by_file: dict[tuple[str, int], dict] = {}
    for file in sorted(set(rows.column("file").to_pylist())):
        quoted = sources.sql_str(file)
        present = [d[0] for d in con.execute(f"SELECT * FROM read_parquet({quoted}) LIMIT 0").description]
        sel = ", ".join(sources.duckdb_ident(c) for c in cols if c in present)
        cur = con.execute(
            f"SELECT file_row_number AS file_row, {sel} FROM read_parquet({quoted}, file_row_number=true) "
            f"WHERE file_row_number IN (SELECT file_row FROM wanted WHERE file = ?)", [file]
        )
        names = [d[0] for d in cur.description]
        for values in cur.fetchall():
            r = dict(zip(names, values, strict=True))
            by_file[(file, r["file_row"])] = r
    con.close()
    results = []
    per_shard = settings.number_sample_per_shard
    ordered = rows.to_pylist()
    for s, start in enumerate(range(0, len(ordered), per_shard)):
        items = []
        for i, r in enumerate(ordered[start:start + per_shard]):
            rec = by_file.get((r["file"], r["file_row"]), {})
            conv = rec.get(src.conversations_col) if src.conversations_col else None
            data = _image_bytes(rec.get(src.image_col))
            items.append({
                "key": _key(first_shard + s, i, settings), "row_id": r["row_id"], "url": r["url"],
                "caption": rec.get(src.caption_col) if src.caption_col else None,
                "status": None if data else "failed_to_download",
                "error_message": None if data else "no image bytes in the row",
                "width": None, "height": None, "original_width": None, "original_height": None,
                "sha256": _sha256(data) if data else None,
                "conversations": json.dumps(conv, default=str) if conv is not None else None,
                **({"recaption": provided_caption(conv)} if src.recaptioned else {}),
                "_bytes": data,
            })
        results.append(_write_shard(shards_dir / f"{first_shard + s:05d}.tar", items, settings))
    return results


def provided_caption(conversations) -> str | None:
    """The caption a recaptioned row carries: its conversation's last assistant turn, stripped (None if blank)."""
    from vora_core.data.conversations import ROLES

    for turn in reversed(conversations if isinstance(conversations, list | tuple) else []):
        if not isinstance(turn, dict):
            continue
        role = ROLES.get(str(turn.get("from", turn.get("role"))).lower())
        text = turn.get("value", turn.get("content"))
        if role == "assistant" and isinstance(text, str):
            return text.replace("<image>", "").strip() or None
    return None


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------ status


