"""The download stage: sources -> url partitions -> webdataset shards (mechanism: vora_core.data.download).

Two kinds of unit: a source's prepare unit (`prepare_units`, run first) and one unit per url partition
it wrote (`plan`); `run_unit` runs either.
"""

from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq

from vora_core.catalog import Catalog
from vora_core.data.download import (
    download_partition,
    input_signature,
    output_settings,
    prepare_source,
)
from vora_core.data.failures import classify_filter
from vora_core.data.failures import failure_report as failure_report_of
from vora_core.manifest import open_manifest
from vora_core.workdir import Unit, fingerprint, is_done, read_marker, sha256_file

NAME = "download"


def prepare_units(catalog: Catalog) -> list[Unit]:
    """One unit per source: read it into url partitions (the units `plan` lists once they exist)."""
    units = []
    for name, src in catalog.sources.items():
        out = catalog.run.sources(name) / "prepared.json"
        fp = catalog.settings_fingerprint(src, catalog.download.rows_per_unit, input_signature(src))
        units.append(Unit(stage=NAME, id=name, output=str(out), fingerprint=fp,
                          params={"source": name, "kind": "prepare"}))
    return units


def plan(catalog: Catalog) -> list[Unit]:
    """One unit per prepared url partition (sources not prepared yet contribute none)."""
    units = []
    settings = output_settings(catalog.download)
    for name, src in catalog.sources.items():
        src_dir = catalog.run.sources(name)
        if not (src_dir / "prepared.json").exists():
            continue
        for part in sorted(src_dir.glob("urls-*.parquet")):
            index = int(part.stem.split("-")[1])
            rows = pq.read_metadata(part).num_rows
            content = fingerprint(rows, sha256_file(part))
            fp = catalog.settings_fingerprint(src, settings, content)
            out = catalog.run.shards(name) / f"unit-{index:05d}.json"
            units.append(Unit(stage="download", id=f"{name}/{index:05d}", output=str(out), fingerprint=fp,
                              params={"source": name, "partition": str(part), "index": index, "rows": rows}))
    return units


def run_unit(catalog: Catalog, unit: Unit) -> dict:
    if unit.params.get("kind") == "prepare":
        return prepare_source(catalog, unit)
    return download_partition(catalog, unit)


def summary(catalog: Catalog) -> list[dict]:
    """Per source: units done/pending, input rows, downloaded, failures by reason."""
    units = plan(catalog)
    con = open_manifest(catalog.run)
    try:
        ok = dict(con.execute("SELECT source, count(*) FROM images GROUP BY source").fetchall())
        failed: dict[str, dict[str, int]] = {}
        for source, reason, n in con.execute(
            "SELECT source, reason, count(*) FROM download_failures GROUP BY ALL ORDER BY ALL"
        ).fetchall():
            failed.setdefault(source, {})[reason] = n
    finally:
        con.close()
    rows = []
    for name, src in catalog.sources.items():
        prepared = read_marker(catalog.run.sources(name) / "prepared.json")
        mine = [u for u in units if u.params["source"] == name]
        done = sum(1 for u in mine if is_done(u.output, u.fingerprint))
        speeds = [m["stats"].get("images_per_s") for u in mine if (m := read_marker(u.output))]
        rows.append({
            "source": name, "kind": src.kind, "prepared": prepared is not None,
            "input_rows": prepared["stats"]["input_rows"] if prepared else None,
            "filtered": sum(prepared["stats"]["filtered"].values()) if prepared else None,
            "units_done": done, "units_pending": len(mine) - done,
            "images": ok.get(name, 0), "failures": sum(failed.get(name, {}).values()),
            "failures_by_reason": failed.get(name, {}),
            "images_per_s": round(sum(s for s in speeds if s) / len(speeds), 1) if speeds else None,
        })
    return rows


def failure_report(catalog: Catalog, examples: int = 5) -> dict:
    """Failed rows by reason over every source: count, share of the rows attempted, and up to
    `examples` example rows (raw error included). Rows a source filter left out are listed as
    `filtered_*` reasons but are not failures (they were never attempted)."""
    con = open_manifest(catalog.run)
    try:
        ok, failed = con.execute("SELECT (SELECT count(*) FROM images), (SELECT count(*) FROM download_failures)"
                                 ).fetchone()
        report = failure_report_of(con, "download", ok + failed, "download_failures",
                                   ("source", "row_id", "url", "error"), "source, shard, key, row_id",
                                   "download_failures", examples)
    finally:
        con.close()
    by_reason = {r["reason"]: r for r in report["reasons"]}
    filtered: Counter = Counter()
    for name in catalog.sources:
        prepared = read_marker(catalog.run.sources(name) / "prepared.json")
        for label, n in (prepared["stats"]["filtered"] if prepared else {}).items():
            filtered[classify_filter(label)] += n
    for reason, n in sorted(filtered.items()):
        if n:
            by_reason[reason] = {"reason": reason, "count": n, "share": None, "examples": [], "filter": True}
    return report | {"reasons": list(by_reason.values())}
