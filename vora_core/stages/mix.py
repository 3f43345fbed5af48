"""The mix stage: text sources -> canonical conversations, then one training mixture per training stage
(mechanism: vora_core.data.mixture, vora_core.data.text).

Units, in order: `text:<source>` (-> `text/<source>/`), then `mixture:pretrain` and `mixture:finetune`
(`mixture/<stage>/part-*.parquet` + `stats.json`).
"""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vora_core.catalog import Catalog, MixtureSettings
from vora_core.data import failures
from vora_core.data.conversations import TEXT_FORMAT
from vora_core.data.download import OUTPUT_SETTINGS
from vora_core.data.mixture import MIXTURE_FORMAT, MIXTURES, build_mixture, caption_sources, file_identities
from vora_core.data.text import ingest
from vora_core.manifest import open_manifest
from vora_core.workdir import Unit, atomic_path, fingerprint, read_marker

NAME = "mix"


# How fingerprints name the run's own files: "content" (path under the run, size, sha256: a copy by any
# means, or a rebuild with the same bytes, stays done); the earlier forms, still accepted as done so that
# older runs are not rebuilt: "mtime" (path under the run, size, mtime; stop 23) and "absolute" (before).
FORMS = ("content", "mtime", "absolute")


def _run_files(catalog: Catalog, pattern: Path, form: str = "content") -> list[list]:
    """The identity of files inside the run directory, in fingerprint form `form` (FORMS)."""
    if form == "content":
        return catalog.run.content_identity(sorted(glob.glob(str(pattern))))
    identities = file_identities(str(pattern))
    return identities if form == "absolute" else [[catalog.run.relative(name), *rest] for name, *rest in identities]


def _text_inputs(catalog: Catalog, name: str, form: str = "content") -> list:
    src = catalog.text_sources[name]
    if src.format == "shapes_vqa":
        return [_run_files(catalog, catalog.run.sources(str(src.source)) / "labels.parquet", form),
                _run_files(catalog, catalog.run.shards(str(src.source)) / "*.parquet", form)]
    if src.path and "://" not in src.path:
        p = Path(src.path)
        pattern = str(p / "*") if p.is_dir() else src.path
        images = [] if src.format != "llava" else [str(Path(src.image_dir or "").resolve())]
        return [file_identities(pattern), images]
    return [src.path]


def _text_fingerprint(catalog: Catalog, name: str, form: str = "content") -> str:
    src = catalog.text_sources[name]
    # llava images are decoded, resized and re-encoded with the download settings
    images = {k: getattr(catalog.download, k) for k in OUTPUT_SETTINGS} if src.format == "llava" else None
    settings = src.model_dump(mode="json")
    if settings["layout"] == "shuffled":  # the default before `layout` existed: older runs stay valid
        del settings["layout"]
    return fingerprint("text", TEXT_FORMAT, settings, catalog.seed, catalog.mix.rows_per_part,
                       _text_inputs(catalog, name, form), images)


def _earlier(fp: str, forms: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(f for f in forms if f != fp))


def text_unit(catalog: Catalog, name: str) -> Unit:
    fp = _text_fingerprint(catalog, name)
    earlier = _earlier(fp, (_text_fingerprint(catalog, name, form) for form in FORMS[1:]))
    return Unit(stage=NAME, id=f"text:{name}", output=str(catalog.run.text(name)), fingerprint=fp,
                params={"kind": "text", "name": name}, earlier_fingerprints=earlier)


def _mixture_fingerprint(catalog: Catalog, stage: str, form: str = "content") -> str:
    m: MixtureSettings = getattr(catalog.mix, stage)
    captions = []
    if m.captions is not None:
        for source in caption_sources(catalog, m):
            captions.append(_run_files(catalog, catalog.run.shards(source) / "?????.parquet", form))
            if m.captions.policy != "alt":
                captions.append(_run_files(catalog, catalog.run.captions(source) / "*.parquet", form))
    texts = {name: _text_fingerprint(catalog, name, form) for name in m.text}
    return fingerprint("mixture", MIXTURE_FORMAT, stage, m.model_dump(mode="json"), captions, texts)


def mixture_unit(catalog: Catalog, stage: str) -> Unit:
    fp = _mixture_fingerprint(catalog, stage)
    earlier = _earlier(fp, (_mixture_fingerprint(catalog, stage, form) for form in FORMS[1:]))
    return Unit(stage=NAME, id=f"mixture:{stage}", output=str(catalog.run.mixture(stage)), fingerprint=fp,
                params={"kind": "mixture", "name": stage}, earlier_fingerprints=earlier)


def plan(catalog: Catalog) -> list[Unit]:
    """Text units first (the mixtures read them), then one unit per configured mixture."""
    configured = [s for s in MIXTURES if getattr(catalog.mix, s).captions is not None or getattr(catalog.mix, s).text]
    return [text_unit(catalog, n) for n in catalog.text_sources] + [mixture_unit(catalog, s) for s in configured]


def run_unit(catalog: Catalog, unit: Unit) -> dict:
    if unit.params["kind"] == "text":
        with atomic_path(unit.output) as tmp:
            return ingest(catalog, unit.params["name"], Path(tmp))
    return build_mixture(catalog, unit.params["name"], Path(unit.output))


def summary(catalog: Catalog) -> list[dict]:
    """One row per unit: done or pending and its counts (for `vora status` and the table artifact);
    a mixture's make-up is in `mixture_table`."""
    rows = []
    for unit in plan(catalog):
        stats = (read_marker(unit.output) or {}).get("stats", {}) if unit.done else {}
        row: dict[str, Any] = {"unit": unit.id, "done": unit.done, "rows": stats.get("rows")}
        if unit.params["kind"] == "text":
            row |= {"written": stats.get("written"), "rejected": stats.get("rejected"),
                    "rejected_by_reason": ", ".join(f"{k}: {v}"
                                                    for k, v in stats.get("rejected_by_reason", {}).items())}
        else:
            row |= {"written": stats.get("rows"), "rejected": None, "rejected_by_reason": None}
        rows.append(row)
    return rows


def failure_report(catalog: Catalog, examples: int = 5) -> dict:
    """The text sources' rejected rows by reason (`vora_core.data.conversations.REASONS`): count, share
    of the rows read (written + rejected, over every text source of the catalog) and up to `examples`
    example rows each (the reject's detail included)."""
    names = list(catalog.text_sources)
    mine = f"source IN ({', '.join('?' * len(names))})" if names else "false"
    con = open_manifest(catalog.run)
    try:
        rows = con.execute(f"SELECT (SELECT count(*) FROM text WHERE {mine}) + (SELECT count(*) FROM "
                           f"text_rejects WHERE {mine})", names * 2).fetchone()[0]
        return failures.failure_report(con, NAME, rows, f"(SELECT * FROM text_rejects WHERE {mine})",
                                       ("source", "row", "id", "detail"), "source, row", "text_rejects",
                                       examples, names)
    finally:
        con.close()
