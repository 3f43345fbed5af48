"""The mix stage: text sources → canonical conversations, then one training mixture per training stage.

Units, in order: `text:<source>` (vora_core.data.text.ingest → `text/<source>/`), then
`mixture:pretrain` and `mixture:finetune` (`mixture/<stage>/part-*.parquet` + `stats.json`).

A mixture is DuckDB SQL over the manifest's views — no Python loop over rows:
* caption samples: downloaded images of sufficient size with a caption under the policy (`recap` |
  `alt` | `recap_or_alt`) not carrying an excluded flag, one per sha256 across sources (of the copies
  with such a caption, the one with the smallest hash(sample_id)), and a prompt chosen per sample by hash(seed, sample_id) from the
  catalog's list; written in batches of shards (one part each) so the captions join never spills;
* text/VQA sources by `repeat` (a factor on the source's rows) or `weight` (a share of the final
  mixture). Counts are exact integers. A fractional copy takes the rows whose rank under a seeded
  affine permutation of the dense row index `idx` is below the remainder — exact, deterministic and
  without sorting the source. A row whose image is not in the `images` view is left out and counted
  (`text_rows_left_out`, reason `image_missing`): the mixture never hands the loader a missing image.
Rows reference their text instead of copying it (see `vora_core.data.text_views.MIXTURE_COLUMNS`); the
`mixture` view and the training stage's `read_mixture` resolve it. Nothing is sorted: every part keeps
its inputs' file order (byte-identical reruns); the loader shuffles.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

from vora_core.catalog import Catalog, MixtureSettings
from vora_core.data import failures
from vora_core.data.conversations import TEXT_FORMAT
from vora_core.data.download import OUTPUT_SETTINGS
from vora_core.data.text_views import IMAGE_TURN_PREFIX, MESSAGES
from vora_core.errors import DataError
from vora_core.workdir import Unit, atomic_path, atomic_write_json, fingerprint, read_marker

log = logging.getLogger(__name__)

STAGE = "mix"
MIXTURES = ("pretrain", "finetune")
MIXTURE_FORMAT = 4  # in a mixture unit's fingerprint: a change rebuilds old runs' (4: no row without its image)


# ----------------------------------------------------------------------------------------- plan


def _files(pattern: str) -> list[list]:
    """(name, size, mtime) of the files matching `pattern` — a cheap identity of a unit's inputs."""
    out = []
    for f in sorted(glob.glob(pattern)):
        st = Path(f).stat()
        out.append([f, st.st_size, st.st_mtime_ns])
    return out


def _text_inputs(catalog: Catalog, name: str) -> list:
    src = catalog.text_sources[name]
    if src.format == "shapes_vqa":
        root = catalog.run.root
        return [_files(str(root / "sources" / str(src.source) / "labels.parquet")),
                _files(str(root / "shards" / str(src.source) / "*.parquet"))]
    if src.path and "://" not in src.path:
        p = Path(src.path)
        pattern = str(p / "*") if p.is_dir() else src.path
        images = [] if src.format != "llava" else [str(Path(src.image_dir or "").resolve())]
        return [_files(pattern), images]
    return [src.path]


def text_unit(catalog: Catalog, name: str) -> Unit:
    src = catalog.text_sources[name]
    # llava images are decoded, resized and re-encoded with the download settings
    images = {k: getattr(catalog.download, k) for k in OUTPUT_SETTINGS} if src.format == "llava" else None
    settings = src.model_dump(mode="json")
    if settings["layout"] == "shuffled":  # the default before `layout` existed: older runs stay valid
        del settings["layout"]
    fp = fingerprint("text", TEXT_FORMAT, settings, catalog.seed, catalog.mix.rows_per_part,
                     _text_inputs(catalog, name), images)
    return Unit(stage=STAGE, id=f"text:{name}", output=str(catalog.run.text(name)), fingerprint=fp,
                params={"kind": "text", "name": name})


def _marker_fp(path: Path) -> str | None:
    marker = read_marker(path)
    return marker.get("fingerprint") if marker else None


def mixture_unit(catalog: Catalog, stage: str) -> Unit:
    m: MixtureSettings = getattr(catalog.mix, stage)
    root = catalog.run.root
    captions = []
    if m.captions is not None:
        for source in caption_sources(catalog, m):
            captions.append(_files(str(root / "shards" / source / "?????.parquet")))
            if m.captions.policy != "alt":
                captions.append(_files(str(root / "captions" / source / "*.parquet")))
    texts = {name: text_unit(catalog, name).fingerprint for name in m.text}
    fp = fingerprint("mixture", MIXTURE_FORMAT, stage, m.model_dump(mode="json"), captions, texts)
    return Unit(stage=STAGE, id=f"mixture:{stage}", output=str(catalog.run.mixture(stage)), fingerprint=fp,
                params={"kind": "mixture", "name": stage})


def plan(catalog: Catalog) -> list[Unit]:
    """Text units first (the mixtures read them), then one unit per configured mixture."""
    configured = [s for s in MIXTURES if getattr(catalog.mix, s).captions is not None or getattr(catalog.mix, s).text]
    return [text_unit(catalog, n) for n in catalog.text_sources] + [mixture_unit(catalog, s) for s in configured]


def run_unit(catalog: Catalog, unit: Unit) -> dict:
    if unit.params["kind"] == "text":
        from vora_core.data.text import ingest

        with atomic_path(unit.output) as tmp:
            return ingest(catalog, unit.params["name"], Path(tmp))
    return build_mixture(catalog, unit.params["name"], Path(unit.output))


# -------------------------------------------------------------------------------------- mixture


def _q(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _list(values: list[str]) -> str:
    return "[" + ", ".join(_q(v) for v in values) + "]::VARCHAR[]"


def _hash_int(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:7], "big")


def permutation(n: int, seed: int, name: str) -> tuple[int, int]:
    """(a, b) with gcd(a, n) = 1: idx → (a·idx + b) mod n is a seeded bijection on 0..n-1."""
    a = _hash_int("a", seed, name) % max(n, 1) or 1
    while math.gcd(a, n) != 1:
        a += 1
    return a, _hash_int("b", seed, name) % max(n, 1)


def largest_remainder(shares: dict[str, float], total: int) -> dict[str, int]:
    """Integers proportional to `shares` that add up to exactly `total`."""
    exact = {k: v * total / sum(shares.values()) for k, v in shares.items()} if shares else {}
    counts = {k: math.floor(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (counts[k] - exact[k], k))[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def caption_sources(catalog: Catalog, m: MixtureSettings) -> list[str]:
    """The image sources a mixture's captions come from (never a llava text source's shards)."""
    assert m.captions is not None
    return list(m.captions.sources or catalog.sources)


CAPTION_BATCH_ROWS = 2_000_000  # image rows per caption part: the join's build side stays in memory


def caption_batches(catalog: Catalog, m: MixtureSettings) -> list[tuple[str, list[str]]]:
    """(source, shard names) groups of about CAPTION_BATCH_ROWS image rows, in source then shard order."""
    import pyarrow.parquet as pq

    batches: list[tuple[str, list[str]]] = []
    for source in caption_sources(catalog, m):
        group, rows = [], 0
        for f in sorted(glob.glob(str(catalog.run.shards(source) / "?????.parquet"))):
            group.append(Path(f).stem)
            rows += pq.ParquetFile(f).metadata.num_rows
            if rows >= CAPTION_BATCH_ROWS:
                batches.append((source, group))
                group, rows = [], 0
        if group:
            batches.append((source, group))
    return batches


def caption_sql(catalog: Catalog, m: MixtureSettings, dups_file: str) -> tuple[str, str, str]:
    """Over the `images` and `captions` views: the duplicated images (COPY into `dups_file`), the image
    funnel's counts, and the caption samples' SELECT of one batch (`{source}` and `{shards}` filled in),
    with `h` (the image's sha256 hash) and `dup` (it has copies elsewhere).

    Why this shape: at paper scale (30M images) one hash join holding every caption, or a sort,
    spills to disk many times over, and copying every caption into the mixture costs more than all
    the rest. So duplicates are found first, over the images alone and on integers: the sha256 values
    seen more than once (as a 64-bit hash; a false collision, p ~ 2e-5 at 30M images, would cost one
    image and never give an image a wrong caption). Then each batch of shards joins its own captions
    (file filters prune the views to those shards), so the build side stays small, and a caption row
    records which text it uses (`caption_from`: recap | alt) and its prompt instead of a copy of the
    text: `vora_core.data.text_views.resolved_sql` builds its messages when it is read. Which copy of a
    duplicate to keep needs its caption, so that is decided last, over the batches' usable copies only
    (`dedup_sql`)."""
    c = m.captions
    assert c is not None
    sources = f"i.source IN ({', '.join(_q(s) for s in caption_sources(catalog, m))})"
    big = f"least(i.width, i.height) >= {c.min_side}"
    dups = f"""
        COPY (SELECT h, count(*) AS copies FROM (
                  SELECT hash(coalesce(i.sha256, i.sample_id)) AS h FROM images i WHERE {sources} AND {big})
              GROUP BY h HAVING count(*) > 1) TO {_q(dups_file)} (FORMAT parquet)"""
    funnel = f"""
        SELECT count(*) AS images, count(*) FILTER (WHERE NOT ({big})) AS too_small,
               (SELECT coalesce(sum(copies - 1), 0) FROM read_parquet({_q(dups_file)}))::BIGINT AS duplicates
        FROM images i WHERE {sources}"""
    # The recaption stage stores stripped captions: a blank one is '' (trimming 30M captions here again
    # would cost half of the caption rows' time).
    recap = (f"coalesce(c.caption, '') <> '' AND NOT list_has_any(coalesce(c.flags, []), "
             f"{_list(list(c.exclude_flags))})")
    alt = "trim(coalesce(i.alt_text, '')) <> ''"
    use = {"recap": f"CASE WHEN {recap} THEN 'recap' END",
           "alt": f"CASE WHEN {alt} THEN 'alt' END",
           "recap_or_alt": f"CASE WHEN {recap} THEN 'recap' WHEN {alt} THEN 'alt' END"}[c.policy]
    recap_chars, alt_chars = "length(c.caption)", "length(trim(i.alt_text))"
    chars = {"recap": recap_chars, "alt": alt_chars,
             "recap_or_alt": f"CASE WHEN {recap} THEN {recap_chars} ELSE {alt_chars} END"}[c.policy]
    # The alt policy needs no recaption at all: skip the join.
    join = ("" if c.policy == "alt" else
            "LEFT JOIN (SELECT * FROM captions WHERE source = '{source}' AND shard IN ({shards})) c "
            "ON c.key = i.key")
    select = f"""
        SELECT '{{source}}' AS source, i.sample_id AS image, hash(coalesce(i.sha256, i.sample_id)) AS h,
               {use} AS caption_from, {chars} AS chars, d.h IS NOT NULL AS dup
        FROM images i {join}
        LEFT JOIN read_parquet({_q(dups_file)}) d ON d.h = hash(coalesce(i.sha256, i.sample_id))
        WHERE i.source = '{{source}}' AND i.shard IN ({{shards}}) AND {big} AND caption_from IS NOT NULL"""
    return dups, funnel, select


def caption_rows_sql(m: MixtureSettings, rows: str) -> str:
    """The mixture part rows of `rows` (a FROM item of `caption_sql`'s batch rows): a prompt per image
    by hash(seed, image), `repeat` copies."""
    c = m.captions
    assert c is not None
    prompts = _list(c.prompts)
    rep = "" if c.repeat == 1 else f", unnest(range({c.repeat})) AS rep"
    sample_id = "'cap/' || x.image" + ("" if c.repeat == 1 else " || CASE WHEN rep > 0 THEN '#' || rep ELSE '' END")
    return f"""
        SELECT {sample_id} AS sample_id, 'caption' AS kind, x.source, x.image, NULL::{MESSAGES} AS messages,
               x.source AS weight_source, NULL::BIGINT AS text_idx,
               list_extract({prompts}, 1 + (hash({m.seed}, x.image) % {len(c.prompts)})::BIGINT) AS prompt,
               x.caption_from, (x.chars + {len(IMAGE_TURN_PREFIX)} + length(prompt))::INTEGER AS chars
        FROM (SELECT *{rep} FROM {rows}) x"""


def dedup_sql(candidates: str) -> str:
    """Of every duplicated image's usable copies (`candidates`: a FROM item of the batches' `dup` rows), the
    one with the smallest hash(sample_id): a copy with a caption under the policy always wins over one
    without, and the choice is the same in every mixture (integers only, no string min)."""
    return f"""
        (SELECT * FROM {candidates} c
         WHERE hash(c.image) = (SELECT min(hash(o.image)) FROM {candidates} o WHERE o.h = c.h))"""


def write_caption_parts(con: Any, catalog: Catalog, m: MixtureSettings, out: Path) -> tuple[dict, int]:
    """The caption parts `part-00000…` (one per batch, then one of the duplicates kept) and the funnel;
    returns (funnel, parts)."""
    from concurrent.futures import ThreadPoolExecutor

    assert m.captions is not None
    dups_file = str(out / "_dups.parquet")
    dups, funnel_sql, select = caption_sql(catalog, m, dups_file)
    con.execute(dups)
    images, too_small, duplicates = con.execute(funnel_sql).fetchall()[0]
    batches = caption_batches(catalog, m)

    def write(i: int) -> int:
        # One thread per batch, each batch single-threaded: the images view streams as the join's probe
        # side in file order, so every part is byte-identical on a rerun without an ORDER BY (DuckDB's
        # parallel probe does not keep insertion order); batches run side by side on the cores. The
        # batch is held once in a temporary table: its copies of duplicated images go aside
        # (`_dup-NNNNN`), the rest into its part.
        source, shards = batches[i]
        cur = con.cursor()
        try:
            cur.execute("SET threads = 1; SET preserve_insertion_order = true; "
                        "SET disabled_optimizers = 'build_side_probe_side'")
            sql = select.replace("{source}", source.replace("'", "''")).replace(
                "{shards}", ", ".join(_q(s) for s in shards))
            cur.execute(f"CREATE TEMP TABLE batch AS {sql}")
            kept = cur.execute(f"COPY ({caption_rows_sql(m, '(SELECT * FROM batch WHERE NOT dup)')}) TO "
                               f"{_q(str(out / f'part-{i:05d}.parquet'))} (FORMAT parquet)").fetchall()[0][0]
            cur.execute(f"COPY (SELECT * FROM batch WHERE dup) TO {_q(str(out / f'_dup-{i:05d}.parquet'))} "
                        "(FORMAT parquet)")
            return kept
        finally:
            cur.close()

    with ThreadPoolExecutor(max_workers=catalog.mix.threads) as pool:
        rows = sum(pool.map(write, range(len(batches))))
    dup_files = [str(out / f"_dup-{i:05d}.parquet") for i in range(len(batches))]
    parts = len(batches)
    if batches:
        cur = con.cursor()
        try:
            cur.execute("SET threads = 1; SET preserve_insertion_order = true; "
                        "SET disabled_optimizers = 'build_side_probe_side'")
            kept = caption_rows_sql(m, dedup_sql(f"read_parquet({_list(dup_files)})"))
            rows += cur.execute(f"COPY ({kept}) TO {_q(str(out / f'part-{parts:05d}.parquet'))} "
                                "(FORMAT parquet)").fetchall()[0][0]
        finally:
            cur.close()
        parts += 1
    for f in [*dup_files, dups_file]:
        Path(f).unlink()
    used = rows // m.captions.repeat
    funnel = {"images": images, "too_small": too_small, "no_caption": images - too_small - duplicates - used,
              "duplicates": duplicates, "used": used}
    return funnel, parts


def image_tables(catalog: Catalog, name: str) -> tuple[str, list[str]] | None:
    """The image source a text source's rows use (llava: its own shards; shapes_vqa: its
    synthetic_shapes source) and that source's shard row tables; None for a source without images."""
    src = catalog.text_sources[name]
    source = {"llava": name, "shapes_vqa": src.source}.get(src.format)
    if source is None:
        return None
    return source, sorted(glob.glob(str(catalog.run.shards(source) / "?????.parquet")))


def text_sql(name: str, files: list[str], n: int, count: int, seed: int,
             images: tuple[str, list[str]] | None = None) -> str:
    """`count` rows of a text source of `n` rows: whole copies, then a permutation-chosen remainder.
    `images` (see `image_tables`): a row whose image is not one of that source's successful shard rows
    — the `images` view's `source/key` — is left out; the caller counts it `image_missing`."""
    full, rem = divmod(count, n)
    a, b = permutation(n, seed, name)
    present = ""
    if images is not None:
        # The text unit's rows may name images its shards no longer hold (a llava unit whose marker
        # outlived its deleted shards): keep only rows whose image the training loader will find.
        source, tables = images
        ids = (f"SELECT {_q(source)} || '/' || key FROM read_parquet({_list(tables)}, union_by_name=true) "
               "WHERE status = 'success'" if tables else "SELECT NULL::VARCHAR LIMIT 0")
        present = f" AND (t.image IS NULL OR t.image IN ({ids}))"
    return f"""
        SELECT t.sample_id || CASE WHEN r.rep > 0 THEN '#' || r.rep ELSE '' END AS sample_id,
               CASE WHEN t.image IS NULL THEN 'text' ELSE 'vqa' END AS kind, t.source, t.image,
               NULL::{MESSAGES} AS messages, {_q(name)} AS weight_source, t.idx AS text_idx,
               NULL::VARCHAR AS prompt, NULL::VARCHAR AS caption_from, t.chars
        FROM read_parquet({_list(files)}) t, range({full + (1 if rem else 0)}) r(rep)
        WHERE (r.rep < {full} OR (t.idx * {a} + {b}) % {n} < {rem}){present}"""


def plan_counts(m: MixtureSettings, captions: int, rows: dict[str, int]) -> dict[str, int]:
    """Exact rows per text source: `repeat` → round(n × repeat); `weight` → its share of the whole."""
    fixed = {name: round(rows[name] * s.repeat) for name, s in m.text.items() if s.repeat is not None}
    weights = {name: s.weight for name, s in m.text.items() if s.weight is not None}
    if not weights:
        return fixed
    base = captions + sum(fixed.values())
    if base == 0:
        raise DataError("mixture weights are shares of a mixture with nothing else in it: add caption samples "
                        "or give one text source a `repeat`")
    total = round(base / (1 - sum(weights.values())))
    return {**fixed, **largest_remainder(weights, total - base)}


def build_mixture(catalog: Catalog, stage: str, out_dir: Path) -> dict:
    from vora_core.manifest import open_manifest

    m: MixtureSettings = getattr(catalog.mix, stage)
    con = open_manifest(catalog.run, memory_limit=catalog.mix.memory_limit, threads=catalog.mix.threads)
    try:
        con.execute("SET preserve_insertion_order = true")
        with atomic_path(out_dir) as tmp:
            tmp.mkdir(parents=True)
            part, funnel, caption_rows = 0, None, 0
            if m.captions is not None:
                funnel, part = write_caption_parts(con, catalog, m, tmp)
                caption_rows = funnel["used"] * m.captions.repeat
            files, rows = {}, {}
            for name in m.text:
                files[name] = sorted(glob.glob(str(catalog.run.text(name) / "part-*.parquet")))
                if not files[name]:
                    raise DataError(f"no conversations in {catalog.run.text(name)}; its text unit has not run")
                rows[name] = con.execute(f"SELECT count(*) FROM read_parquet({_list(files[name])})").fetchall()[0][0]
                if rows[name] == 0:
                    raise DataError(f"text source {name!r} has no valid rows (see the text_rejects view)")
            counts = plan_counts(m, caption_rows, rows)
            used, missing = {}, {}
            for name in m.text:
                if counts[name] == 0:
                    used[name] = 0
                    continue
                sql = text_sql(name, files[name], rows[name], counts[name], m.seed, image_tables(catalog, name))
                used[name] = con.execute(f"COPY ({sql}) TO {_q(str(tmp / f'part-{part:05d}.parquet'))} "
                                         "(FORMAT parquet)").fetchall()[0][0]
                if used[name] < counts[name]:
                    missing[name] = counts[name] - used[name]
                    log.warning("mix.%s: %d rows of %s left out: their image is not in the images view (were its "
                                "shards removed? `vora stage mix CATALOG --force` writes them again)", stage,
                                missing[name], name)
                part += 1
            if part == 0:
                raise DataError(f"mix.{stage}: the mixture is empty (no captions, no text sources)")
            by_source = con.execute(f"""
                SELECT weight_source, kind, count(*) AS rows, count(image) AS images, sum(chars)::BIGINT AS chars
                FROM read_parquet({_q(str(tmp / 'part-*.parquet'))})
                GROUP BY ALL ORDER BY weight_source, kind""").fetchall()
            total = sum(r[2] for r in by_source)
            stats = {
                "stage": stage, "rows": total, "parts": part,
                "by_source": [{"source": s, "kind": k, "rows": n, "share": round(n / total, 6), "images": i,
                               "est_text_tokens": c // 4} for s, k, n, i, c in by_source],
                "captions": funnel, "text_rows_available": rows, "text_rows_used": used,
                "text_rows_left_out": {name: {"image_missing": k} for name, k in missing.items()},
                "est_text_tokens": sum(r[4] for r in by_source) // 4,
            }
            atomic_write_json(tmp / "stats.json", stats)
    finally:
        con.close()
    return {k: stats[k] for k in ("rows", "parts", "est_text_tokens")} | {
        "by_source": {f"{r['source']}/{r['kind']}": r["rows"] for r in stats["by_source"]},
        "left_out": {"image_missing": sum(missing.values())} if missing else {}}


# -------------------------------------------------------------------------------------- summary


def summary(catalog: Catalog) -> list[dict]:
    """One row per unit: done or pending and its counts (for `vora status` and the table artifact);
    a mixture's make-up is in `mixture_table`."""
    rows = []
    for unit in plan(catalog):
        stats = (read_marker(unit.output) or {}).get("stats", {}) if unit.done else {}
        row: dict[str, Any] = {"unit": unit.id, "done": unit.done, "rows": stats.get("rows")}
        if unit.params["kind"] == "text":
            row |= {"written": stats.get("written"), "rejected": stats.get("rejected"),
                    "rejected_by_reason": ", ".join(f"{k}: {v}" for k, v in stats.get("rejected_by_reason", {}).items())}
        else:
            row |= {"written": stats.get("rows"), "rejected": None, "rejected_by_reason": None}
        rows.append(row)
    return rows


def failure_report(catalog: Catalog, examples: int = 5) -> dict:
    """The text sources' rejected rows by reason (`vora_core.data.conversations.REASONS`): count, share
    of the rows read (written + rejected, over every text source of the catalog) and up to `examples`
    example rows each (the reject's detail included)."""
    from vora_core.manifest import open_manifest

    names = list(catalog.text_sources)
    mine = f"source IN ({', '.join('?' * len(names))})" if names else "false"
    con = open_manifest(catalog.run)
    try:
        rows = con.execute(f"SELECT (SELECT count(*) FROM text WHERE {mine}) + (SELECT count(*) FROM "
                           f"text_rejects WHERE {mine})", names * 2).fetchone()[0]
        return failures.failure_report(con, STAGE, rows, f"(SELECT * FROM text_rejects WHERE {mine})",
                                       ("source", "row", "id", "detail"), "source, row", "text_rejects",
                                       examples, names)
    finally:
        con.close()


def mixture_table(catalog: Catalog, stage: str) -> list[dict]:
    """The mixture of `stage` from its stats.json: one row per source and kind (rows, share, estimated
    tokens), then the caption funnel (images → too small / no caption / duplicates → used) as rows."""
    path = catalog.run.mixture(stage) / "stats.json"
    if not path.exists():
        return []
    stats = json.loads(path.read_text())
    rows = [{"part": "source", "name": f"{r['source']}/{r['kind']}", "rows": r["rows"],
             "share": f"{r['share']:.1%}", "est_tokens": r["est_text_tokens"]} for r in stats["by_source"]]
    rows.append({"part": "total", "name": stage, "rows": stats["rows"], "share": "100.0%",
                 "est_tokens": stats["est_text_tokens"]})
    funnel = stats.get("captions") or {}
    for step in ("images", "too_small", "no_caption", "duplicates", "used"):
        n = funnel.get(step)
        if n is not None:
            rows.append({"part": "caption funnel", "name": step, "rows": n, "share": None, "est_tokens": None})
    return rows
