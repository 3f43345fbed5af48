"""The recaption stage: one unit per downloaded shard (mechanism: vora_core.caption.recaption).

Unit `<source>/<shard>` captions the shard's images into `captions/<source>/<shard>.parquet`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from vora_core.caption import quality
from vora_core.caption.recaption import (
    caption_shard,
    flag_warning,
    recaptioned,
    settings_fingerprint,
    shard_content,
    shard_images,
    shard_tars,
)
from vora_core.catalog import Catalog
from vora_core.data.failures import failure_report as failure_report_of
from vora_core.manifest import open_manifest
from vora_core.workdir import Unit, fingerprint, read_marker

NAME = "recaption"


def plan(catalog: Catalog) -> list[Unit]:
    """One unit per complete shard of every source (deterministic, cheap, no side effects)."""
    settings_fp = settings_fingerprint(catalog)
    units = []
    for source in catalog.sources:
        provided = ["provided captions kept"] if recaptioned(catalog, source) else []
        for tar in shard_tars(catalog, source):
            fp = fingerprint(settings_fp, shard_content(tar), *provided)
            out = catalog.run.captions(source) / f"{tar.stem}.parquet"
            units.append(Unit(stage=NAME, id=f"{source}/{tar.stem}", output=str(out), fingerprint=fp,
                              params={"source": source, "shard": tar.stem, "tar": str(tar)}))
    return units


def run_unit(catalog: Catalog, unit: Unit) -> dict:
    return caption_shard(catalog, unit)


def summary(catalog: Catalog) -> list[dict]:
    """Per source: shards done / pending, images, captions, flags, throughput (from the markers)."""
    units = plan(catalog)
    rows = []
    for source in catalog.sources:
        mine = [u for u in units if u.params["source"] == source]
        stats = [m["stats"] for u in mine if u.done and (m := read_marker(u.output))]
        flags: Counter = Counter()
        for s in stats:
            flags.update(s.get("flags", {}))
        seconds = sum(s.get("seconds") or 0 for s in stats)
        images = sum(s.get("images", 0) for s in stats)
        tokens = sum(s.get("tokens", 0) for s in stats)
        rows.append({
            "source": source, "shards_done": len(stats), "shards_pending": len(mine) - len(stats),
            "images": images, "captions": sum(s.get("captions", 0) for s in stats),
            "flags": dict(sorted(flags.items())),
            "quality": flag_warning(flags, images, catalog.recaption.max_flag_share) or "ok",
            "images_per_s": round(images / seconds, 2) if seconds else None,
            "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
        })
    return rows


# The flags of an image without a caption (its `error` says why); every other flag marks a caption's quality.
FAILURE_FLAGS = (quality.UNDECODABLE_IMAGE, quality.REQUEST_REJECTED)


def failure_report(catalog: Catalog, examples: int = 5) -> dict:
    """Images without a caption by reason (`FAILURE_FLAGS`): count, share of the images in the captioned
    shards of the catalog's sources, and up to `examples` example rows each (the raw error included).
    Quality flags (truncated, repetitive, ...) are no failures: `summary` warns about them."""
    names = list(catalog.sources)
    mine = f"source IN ({', '.join('?' * len(names))})"
    con = open_manifest(catalog.run)
    try:
        rows = con.execute(f"SELECT count(*) FROM captions WHERE {mine}", names).fetchone()[0]
        reason = " ".join(f"WHEN list_contains(flags, '{f}') THEN '{f}'" for f in FAILURE_FLAGS)
        failed = (f"(SELECT *, CASE {reason} ELSE 'other' END AS reason "
                  f"FROM captions WHERE {mine} AND error IS NOT NULL)")
        return failure_report_of(con, NAME, rows, failed, ("source", "shard", "key", "sample_id", "error"),
                                 "source, shard, key", "captions", examples, names)
    finally:
        con.close()


def progress(catalog: Catalog, units: list[Unit] | None = None) -> tuple[int, int]:
    """(images captioned, images in complete shards) over `units` (default: the plan). A flow counts
    this once, then adds each unit it finishes (`shard_images`)."""
    done = total = 0
    for unit in plan(catalog) if units is None else units:
        n = shard_images(Path(unit.params["tar"]))
        total += n
        if unit.done:
            done += n
    return done, total
