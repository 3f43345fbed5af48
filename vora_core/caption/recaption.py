"""The recaption stage: a caption for every downloaded image, one unit per shard.

Unit `<source>/<shard>` reads the shard's images through its tar index, gives each a prompt chosen
from the catalog's list by (seed, sample_id), captions them in batches with the configured engine and
writes `captions/<source>/<shard>.parquet` atomically; its completion marker follows
(`run_unit_with_marker`). Every image gets exactly one row: a caption, or the reason it has none
(`flags`, `error`). Nothing is dropped.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vora_core.caption import quality
from vora_core.caption.engines import CaptionRequest, CaptionResult, get_engine
from vora_core.caption.models import model_identity, resolve_model
from vora_core.caption.prompts import choose_prompt
from vora_core.catalog import Catalog, RecaptionSettings
from vora_core.data.images import open_rgb
from vora_core.data.shards import ShardReader, index_path
from vora_core.errors import DataError, StageError, VoraError
from vora_core.workdir import Unit, atomic_path, fingerprint, sha256_file

log = logging.getLogger(__name__)

STAGE = "recaption"
PROVIDED = "provided"  # engine and model of a caption the source carried (recaptioned sources)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("key", pa.string()), ("caption", pa.string()), ("prompt", pa.string()),
    ("model", pa.string()), ("engine", pa.string()), ("n_tokens", pa.int32()), ("seconds", pa.float32()),
    ("finish_reason", pa.string()), ("flags", pa.list_(pa.string())), ("error", pa.string()),
])
# Settings that change the captions or their flags (throughput knobs — batch size, concurrency,
# servers, retries, tensor parallelism — do not, so editing them redoes nothing).
OUTPUT_SETTINGS = (
    "engine", "model", "tiny", "prompts", "system_prompt", "seed", "max_new_tokens", "temperature", "top_p",
    "min_pixels", "max_pixels", "dtype", "quality",
)


def settings_fingerprint(catalog: Catalog) -> str:
    s = catalog.recaption
    dumped = s.model_dump(mode="json")
    parts = {k: dumped[k] for k in OUTPUT_SETTINGS}
    if s.engine == "openai":
        parts["served_model_name"] = s.openai.served_model_name
    return fingerprint(parts, model_identity(catalog))


# ---------------------------------------------------------------------------------------------- plan

_DIGESTS: dict[tuple, str] = {}


def shard_content(tar: Path) -> list:
    """The shard's identity: a hash of its row table (keys, statuses, per-image sha256) + the tar size.
    Memoised per (path, size, mtime) so status calls stay cheap."""
    rows = tar.with_suffix(".parquet")
    st = rows.stat()
    memo = (str(rows), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        _DIGESTS[memo] = sha256_file(rows)
    return [_DIGESTS[memo], tar.stat().st_size]


def shard_tars(catalog: Catalog, source: str) -> list[Path]:
    """Complete shards of a source: the row table is moved into place last, so its presence says so."""
    d = catalog.run.shards(source)
    return sorted(p.with_suffix(".tar") for p in d.glob("[0-9]*.parquet")
                  if p.stem.isdigit() and p.with_suffix(".tar").exists())


# ----------------------------------------------------------------------------------------------- run


def _read_images(reader: ShardReader, source: str, settings: RecaptionSettings, skip: dict | None = None):
    """(key, sample_id, prompt, request or None, error) per sample in key order; the keys in `skip` are not
    read (no request, no error)."""
    for key in sorted(reader.keys()):
        sample_id = f"{source}/{key}"
        prompt = choose_prompt(settings.prompts, settings.seed, sample_id)
        if skip and key in skip:
            yield key, sample_id, prompt, None, None
            continue
        ext = next((e for e in IMAGE_EXTS if e in reader.exts(key)), None)
        if ext is None:
            yield key, sample_id, prompt, None, f"no image file in the sample (has: {', '.join(reader.exts(key))})"
            continue
        try:
            data = reader.read(key, ext)
            image = open_rgb(data)
        except DataError as e:
            yield key, sample_id, prompt, None, str(e)
            continue
        yield key, sample_id, prompt, CaptionRequest(sample_id, image, data, ext, prompt), None


def _caption_batch(engine, batch: list[CaptionRequest], settings: RecaptionSettings, where: str) -> list[CaptionResult]:
    """A failing batch is retried (with backoff); a configuration error is not."""
    for attempt in range(settings.batch_retries + 1):
        try:
            results = engine.caption(batch)
            if len(results) != len(batch):
                raise StageError(f"{where}: engine returned {len(results)} results for {len(batch)} images")
            return results
        except VoraError:
            raise
        except Exception as e:  # noqa: BLE001 - retried, then reported with the unit
            if attempt == settings.batch_retries:
                raise StageError(
                    f"{where}: a batch of {len(batch)} image{'s' * (len(batch) != 1)} failed {attempt + 1} times: "
                    f"{type(e).__name__}: {e}"
                ) from e
            log.warning("%s: batch failed (%s: %s); retry %d", where, type(e).__name__, e, attempt + 1)
            time.sleep(min(30.0, 0.5 * 2**attempt))
    raise AssertionError("unreachable")


def recaptioned(catalog: Catalog, source: str) -> bool:
    return bool(getattr(catalog.sources.get(source), "recaptioned", False))


def provided_captions(tar: Path) -> dict[str, str]:
    """key → the caption a recaptioned source's row carries (the shard row table's `recaption`)."""
    table = pq.read_table(tar.with_suffix(".parquet"))
    if "recaption" not in table.column_names:
        return {}
    return {k: c for k, c in zip(table.column("key").to_pylist(), table.column("recaption").to_pylist(), strict=True)
            if c}


def caption_shard(catalog: Catalog, unit: Unit) -> dict:
    """Caption one shard; write `captions/<source>/<shard>.parquet` atomically; return its stats. A
    recaptioned source's images keep the caption they carry (engine `provided`): the model is loaded
    only for the images without one."""
    settings = catalog.recaption
    source = unit.params["source"]
    tar = Path(unit.params["tar"])
    if not index_path(tar).exists():
        raise StageError(f"recaption {unit.id}: {index_path(tar)} is missing; rerun the download stage")
    _remove_stale_temporaries(Path(unit.output))
    provided = provided_captions(tar) if recaptioned(catalog, source) else {}
    engine, model_name = None, settings.model
    started = time.perf_counter()
    rows: list[dict] = []
    pending: list[tuple[dict, CaptionRequest]] = []
    generated = 0

    def load() -> None:
        nonlocal engine, model_name
        engine = get_engine(settings, resolve_model(catalog), model_identity(catalog))
        model_name = engine.model if settings.engine == "openai" else settings.model  # served name / tiny / path
        for row, _ in pending:
            row["model"] = model_name

    if not provided:
        load()

    def flush() -> None:
        nonlocal generated
        if not pending:
            return
        if engine is None:
            load()
        batch = [req for _, req in pending]
        results = _caption_batch(engine, batch, settings, f"recaption {unit.id}")
        for (row, _), res in zip(pending, results, strict=True):
            if res.finish_reason == "error":
                row.update(caption=None, n_tokens=0, seconds=res.seconds, finish_reason="error",
                           flags=[quality.REQUEST_REJECTED], error=res.error)
                continue
            text, flags = quality.assess(res.text, res.finish_reason, settings.quality)
            row.update(caption=text, n_tokens=res.n_tokens, seconds=res.seconds, finish_reason=res.finish_reason,
                       flags=flags, error=None)
            generated += res.n_tokens
        pending.clear()

    with ShardReader(tar) as reader:
        for key, sample_id, prompt, request, error in _read_images(reader, source, settings, provided):
            row = {"sample_id": sample_id, "key": key, "prompt": prompt, "model": model_name,
                   "engine": settings.engine}
            rows.append(row)
            if key in provided:
                text, flags = quality.assess(provided[key], "stop", settings.quality)
                row.update(prompt=None, model=PROVIDED, engine=PROVIDED, caption=text, n_tokens=0, seconds=0.0,
                           finish_reason="stop", flags=flags, error=None)
                continue
            if request is None:
                row.update(caption=None, n_tokens=0, seconds=0.0, finish_reason="error",
                           flags=[quality.UNDECODABLE_IMAGE], error=error)
                continue
            pending.append((row, request))
            if len(pending) >= (engine.batch_size if engine is not None else settings.batch_size):
                flush()
        flush()

    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    with atomic_path(unit.output) as tmp:
        pq.write_table(table, tmp)
    seconds = time.perf_counter() - started
    flags = Counter(f for r in rows for f in r["flags"])
    captioned = sum(1 for r in rows if r["caption"])
    stats = {
        "source": source, "shard": unit.params["shard"], "images": len(rows), "captions": captioned,
        "flags": dict(sorted(flags.items())), "provided": sum(r["engine"] == PROVIDED for r in rows),
        "tokens": generated, "seconds": round(seconds, 3),
        "images_per_s": round(len(rows) / seconds, 3) if seconds > 0 else None,
        "tokens_per_s": round(generated / seconds, 2) if seconds > 0 else None,
        "engine": settings.engine, "model": model_name,
    }
    log.info("recaption %s: %d images, %d captions, flags %s", unit.id, len(rows), captioned, stats["flags"])
    return stats


def _remove_stale_temporaries(output: Path) -> None:
    """Temporary files a killed earlier attempt of this unit left beside its output."""
    for old in output.parent.glob(f".{output.name}*.tmp-*"):  # the output and its marker
        old.unlink(missing_ok=True)


# -------------------------------------------------------------------------------------------- status


def flag_warning(flags: Counter | dict[str, int], images: int, max_share: float) -> str | None:
    """`WARNING: invalid_text 599/600 (99.8%), ... above recaption.max_flag_share=20%`, or None."""
    over = [(f, n) for f, n in sorted(flags.items()) if images and n / images > max_share]
    if not over:
        return None
    listed = ", ".join(f"{f} {n}/{images} ({n / images:.1%})" for f, n in over)
    return f"WARNING: {listed} above recaption.max_flag_share={max_share:.0%}"


def shard_images(tar: Path) -> int:
    """Images in a shard: the download's `<shard>_stats.json` count, else the tar index's keys."""
    try:
        stats = json.loads(tar.with_name(tar.stem + "_stats.json").read_text())
        if isinstance(stats.get("successes"), int):
            return stats["successes"]
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    keys = pq.read_table(index_path(tar), columns=["key"]).column("key")
    return len(set(keys.to_pylist()))


__all__ = ["SCHEMA", "caption_shard", "flag_warning", "resolve_model", "shard_images", "shard_tars"]
