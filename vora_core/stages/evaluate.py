"""The evaluate stage: one unit per benchmark, then `eval/summary.json` (`finish`)
(mechanism: vora_core.eval.runner, loaders, formats, scoring)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from vora_core.catalog import Catalog
from vora_core.data import failures
from vora_core.errors import StageError
from vora_core.eval import heldout
from vora_core.eval.runner import (
    PROTOCOL_VERSION,
    REJECTS_SCHEMA,
    cached_model,
    evaluate_benchmark,
    load_spec,
    model_dir,
)
from vora_core.workdir import Unit, atomic_path, atomic_write_json, dir_identity, fingerprint, read_marker

log = logging.getLogger(__name__)

NAME = "evaluate"


def _data_identity(path: Path) -> list:
    """Benchmark files' identity (top level only: image folders are too large to stat at plan time)."""
    if path.is_file():
        return [path.name, path.stat().st_size, path.stat().st_mtime_ns]
    if path.is_dir():
        return sorted([p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in path.iterdir() if p.is_file())
    return ["missing", str(path)]


def benchmark_specs(catalog: Catalog) -> list[dict[str, Any]]:
    """Every benchmark of the run: the catalog's list + the held-out benchmarks of synthetic sources."""
    specs = [b.model_dump(mode="json") for b in catalog.evaluate.benchmarks]
    if catalog.evaluate.heldout:
        for name, src in catalog.sources.items():
            if src.kind == "synthetic_shapes" and src.heldout > 0:
                for kind in heldout.KINDS:
                    specs.append({"name": f"{name}-heldout-{kind}", "format": "heldout", "source": name,
                                  "kind": kind, "path": str(heldout.labels_path(catalog.run.sources(name)))})
    names = [s["name"] for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise StageError(f"evaluate: benchmark name(s) {', '.join(dupes)} used twice; give each a unique name")
    return specs


def plan(catalog: Catalog) -> list[Unit]:
    """One unit per benchmark (deterministic, cheap: benchmark files are only stat'ed)."""
    settings = catalog.evaluate
    model = model_dir(catalog)
    common = {"protocol": PROTOCOL_VERSION, "model": dir_identity(model), "max_new_tokens": settings.max_new_tokens,
              "dtype": settings.dtype, "seed": catalog.seed}
    units = []
    for spec in benchmark_specs(catalog):
        out = catalog.run.stage_dir(NAME) / spec["name"]
        path, named = Path(spec["path"]), {**spec, "path": catalog.run.relative(spec["path"])}
        data = _data_identity(path)
        # a held-out benchmark's labels live in the run: named by their path under it and identified by
        # their content, so that a run copied or moved by any means stays done (the earlier forms, by
        # mtime and by absolute path, are accepted too)
        inside = named["path"] != spec["path"] and path.is_file()
        fp = fingerprint(common, named, catalog.run.content_identity([path]) if inside else data)
        earlier = tuple(dict.fromkeys(f for f in (fingerprint(common, named, data), fingerprint(common, spec, data))
                                      if f != fp))
        units.append(Unit(stage=NAME, id=spec["name"], output=str(out), fingerprint=fp,
                          params={"spec": spec, "model": str(model)}, earlier_fingerprints=earlier))
    return units


def run_unit(catalog: Catalog, unit: Unit) -> dict:
    settings = catalog.evaluate
    model_path = Path(unit.params["model"])
    if not (model_path / "config.json").exists():
        raise StageError(f"evaluate: model {model_path} not found; run the stage that writes it "
                         f"(evaluate.model = {settings.model!r}) or point evaluate.model at a model directory")
    bench = load_spec(catalog, unit.params["spec"])
    if not bench.samples:
        raise StageError(f"evaluate {unit.id}: no usable questions ({len(bench.rejects)} rejected); check its files")
    loaded = cached_model(str(model_path), settings.dtype, settings.device)
    out = Path(unit.output)
    with atomic_path(out) as tmp:
        scores = evaluate_benchmark(loaded, bench, tmp, settings.batch_size, settings.max_new_tokens)
    log.info("evaluate %s: %s = %s", unit.id, scores["main"], scores["value"])
    keep = ("format", "main", "value", "scored", "rejected", "samples_per_s", "seconds")
    return {k: scores[k] for k in keep} | {"questions": len(bench.samples) + len(bench.rejects)}


def finish(catalog: Catalog) -> Path:
    """eval/summary.json: every finished benchmark's headline score (and where its files are)."""
    rows = {}
    for unit in plan(catalog):
        scores_file = Path(unit.output) / "scores.json"
        if unit.done and scores_file.exists():
            s = json.loads(scores_file.read_text())
            rows[unit.id] = {k: s.get(k) for k in ("format", "main", "value", "scored", "rejected")}
    summary = {"model": str(model_dir(catalog)), "benchmarks": rows}
    return atomic_write_json(catalog.run.stage_dir(NAME) / "summary.json", summary)


def summary(catalog: Catalog) -> list[dict]:
    """Per benchmark: done or pending, the headline metric, counts and throughput (for status/artifacts)."""
    rows = []
    for unit in plan(catalog):
        marker = read_marker(unit.output) if unit.done else None
        stats = (marker or {}).get("stats", {})
        rows.append({"benchmark": unit.id, "done": marker is not None, "format": stats.get("format"),
                     "metric": stats.get("main"), "value": stats.get("value"), "scored": stats.get("scored"),
                     "rejected": stats.get("rejected"), "samples_per_s": stats.get("samples_per_s")})
    return rows


def failure_report(catalog: Catalog, examples: int = 5) -> dict:
    """The finished benchmarks' rejected questions by reason (`loaders.REASONS`, `bad_image` also for an
    image that does not decode): count, share of the questions (scored + rejected, `filtered_*` left out:
    they are not part of the benchmark) and up to `examples` example rows each; `filtered_*` counts are
    listed as filters, as the download stage lists its sources' filters."""
    tables, rows = [], 0
    for unit in plan(catalog):
        out = Path(unit.output)
        if not (unit.done and (out / "rejects.parquet").exists()):
            continue
        table = pq.read_table(out / "rejects.parquet")
        tables.append(table.append_column("benchmark", pa.array([unit.id] * table.num_rows, pa.string()))
                      .append_column("row", pa.array(range(table.num_rows), pa.int64())))
        rows += json.loads((out / "scores.json").read_text())["scored"]
    schema = REJECTS_SCHEMA.append(pa.field("benchmark", pa.string())).append(pa.field("row", pa.int64()))
    rejects = pa.concat_tables(tables) if tables else schema.empty_table()
    con = duckdb.connect()
    try:
        con.register("eval_rejects", rejects)
        filtered = dict(con.execute("SELECT reason, count(*) FROM eval_rejects WHERE starts_with(reason, 'filtered_') "
                                    "GROUP BY reason ORDER BY reason").fetchall())
        rows += rejects.num_rows - sum(filtered.values())
        report = failures.failure_report(
            con, NAME, rows, "(SELECT * FROM eval_rejects WHERE NOT starts_with(reason, 'filtered_'))",
            ("benchmark", "id", "detail"), "benchmark, row", "eval/<benchmark>/rejects.parquet", examples)
    finally:
        con.close()
    extra = [{"reason": r, "count": n, "share": None, "examples": [], "filter": True} for r, n in filtered.items()]
    return report | {"reasons": report["reasons"] + extra}
