"""Image sources → url lists (or row lists) for the download stage.

Each source kind turns its input files into one relation with the columns
`row_id, url, caption` (+ source-specific extras kept through download), using DuckDB so that
filters such as DataComp's longer-edge rule run before any byte is downloaded. Invalid rows (null,
empty or duplicate urls/ids) are not dropped: they are returned as rejects with a reason.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from vora_core.catalog import (
    DataCompSource,
    GLDv2Source,
    ParquetImagesSource,
    SyntheticShapesSource,
    UrlListSource,
)
from vora_core.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class PreparedRows:
    """What a source yields before download."""

    rows: pa.Table  # row_id (str), url (str), caption (str|null), extras...
    rejects: pa.Table  # row_id, url, reason
    filtered: dict[str, int] = field(default_factory=dict)  # rows left out by a source filter, by reason
    extras: list[str] = field(default_factory=list)


def connect(memory_limit: str = "2GB", threads: int = 2) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"SET memory_limit='{memory_limit}'; SET threads={threads}")
    return con


def expand(pattern: str, what: str) -> list[str]:
    """A file, a directory (all files inside) or a glob → sorted file list; an empty match is an error."""
    path = Path(pattern)
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        files = sorted(glob.glob(pattern))
    if not files:
        raise DataError(f"{what}: no file matches {pattern!r}; check the path in the catalog")
    return files


def sql_str(value: str) -> str:
    """A SQL string literal (paths may hold `'`)."""
    return "'" + value.replace("'", "''") + "'"


def sql_list(values: list[str]) -> str:
    return "[" + ", ".join(sql_str(v) for v in values) + "]"


def _reader_sql(files: list[str], fmt: str) -> str:
    listing = sql_list(files)
    if fmt == "parquet":
        return f"read_parquet({listing}, union_by_name=true)"
    if fmt == "csv":
        return f"read_csv({listing}, header=true, union_by_name=true, all_varchar=true)"
    if fmt == "jsonl":
        return f"read_json({listing}, format='newline_delimited', union_by_name=true)"
    raise DataError(f"unknown format {fmt!r}; use parquet, csv or jsonl")


def _columns(con: duckdb.DuckDBPyConnection, sql: str) -> list[str]:
    return [d[0] for d in con.execute(f"SELECT * FROM {sql} LIMIT 0").description]


def _require(columns: list[str], needed: dict[str, str], where: str, fix: str | None = None) -> None:
    """`fix`: what to tell the user; default: set `<role>_col` (for kinds that have those keys)."""
    for role, col in needed.items():
        if col not in columns:
            raise DataError(
                f"{where}: no {role} column {col!r}; columns found: {', '.join(columns)} "
                f"({fix or f'set `{role}_col` in the catalog source'})"
            )


def _not_empty(files: list[str], what: str) -> None:
    for f in files:
        if Path(f).stat().st_size == 0:
            raise DataError(f"{what}: {f} is empty (0 bytes); fill it or remove it")


def _validate(con: duckdb.DuckDBPyConnection, base_sql: str, extras: list[str]) -> PreparedRows:
    """Split `base_sql` (row_id, url, caption, extras) into valid rows and rejects with reasons."""
    extra_sel = "".join(f", {duckdb_ident(c)}" for c in extras)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE src AS
        SELECT row_number() OVER () AS _ord, CAST(row_id AS VARCHAR) AS row_id, CAST(url AS VARCHAR) AS url,
               CAST(caption AS VARCHAR) AS caption{extra_sel}
        FROM ({base_sql})
        """
    )
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE judged AS
        SELECT *, CASE
            WHEN row_id IS NULL OR trim(row_id) = '' THEN 'null or empty id'
            WHEN url IS NULL THEN 'null url'
            WHEN trim(url) = '' THEN 'empty url'
            WHEN row_number() OVER (PARTITION BY row_id ORDER BY _ord) > 1 THEN 'duplicate id'
            WHEN row_number() OVER (PARTITION BY trim(url) ORDER BY _ord) > 1 THEN 'duplicate url'
            WHEN NOT regexp_matches(trim(url), '^(https?|file)://') THEN 'unsupported url scheme'
        END AS reason
        FROM src
        """
    )
    cols = ["row_id", "trim(url) AS url", "caption", *[duckdb_ident(c) for c in extras]]
    rows = con.sql(f"SELECT {', '.join(cols)} FROM judged WHERE reason IS NULL ORDER BY _ord").to_arrow_table()
    rejects = con.sql(
        "SELECT coalesce(row_id, '#' || _ord) AS row_id, url, reason FROM judged "
        "WHERE reason IS NOT NULL ORDER BY _ord"
    ).to_arrow_table()
    return PreparedRows(rows=rows, rejects=rejects, extras=extras)


def duckdb_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# ------------------------------------------------------------------------------------------ url_list


def url_list_rows(src: UrlListSource, con: duckdb.DuckDBPyConnection) -> PreparedRows:
    files = expand(src.path, "url_list source")
    _not_empty(files, "url_list source")
    fmt = src.format or Path(files[0]).suffix.lstrip(".").replace("json", "jsonl").replace("jsonll", "jsonl")
    sql, broken = _reader_sql(files, fmt), None
    if fmt == "jsonl":
        sql, broken = _jsonl_table(con, files)
    columns = [c for c in _columns(con, sql) if c != "_line"]
    needed = {"url": src.url_col}
    if src.caption_col:
        needed["caption"] = src.caption_col
    if src.id_col:
        needed["id"] = src.id_col
    _require(columns, needed, files[0] if len(files) == 1 else src.path)
    row_id = duckdb_ident(src.id_col) if src.id_col else ("_line" if broken else "row_number() OVER () - 1")
    caption = duckdb_ident(src.caption_col) if src.caption_col else "NULL"
    base = f"SELECT {row_id} AS row_id, {duckdb_ident(src.url_col)} AS url, {caption} AS caption FROM {sql}"
    prepared = _validate(con, base, [])
    if broken:
        prepared.rejects = pa.concat_tables([pa.Table.from_pylist(broken, schema=prepared.rejects.schema),
                                             prepared.rejects])
    return prepared


def _jsonl_table(con: duckdb.DuckDBPyConnection, files: list[str]) -> tuple[str, list[dict]]:
    """jsonl through DuckDB; if DuckDB refuses the files (a broken line, a BOM, mixed types), read them
    line by line instead: each line that is not a JSON object is one reject, the others go on."""
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE url_rows AS SELECT * FROM {_reader_sql(files, 'jsonl')}")
        return "url_rows", []
    except duckdb.Error:
        pass
    records, broken, n = [], [], 0
    for f in files:
        with open(f, "rb") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line.decode("utf-8-sig" if lineno == 1 else "utf-8"))
                    if not isinstance(obj, dict):
                        raise ValueError("not an object")
                except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                    broken.append({"row_id": f"{Path(f).name}:{lineno}", "url": None, "reason": "malformed json line"})
                else:  # row ids and urls are text downstream; nested values keep their JSON
                    records.append({"_line": n, **{k: v if v is None or isinstance(v, str) else json.dumps(v)
                                                   for k, v in obj.items()}})
                n += 1
    if not records:
        raise DataError(f"{', '.join(files)}: no line is a JSON object ({len(broken)} malformed lines); "
                        "is the file jsonl? set `format` in the catalog source")
    names = list(dict.fromkeys(k for r in records for k in r))
    table = pa.table({k: pa.array([r.get(k) for r in records], pa.int64() if k == "_line" else pa.string())
                      for k in names})
    con.register("url_rows_py", table)
    return "url_rows_py", broken


# ------------------------------------------------------------------------------------------ datacomp


def datacomp_rows(src: DataCompSource, con: duckdb.DuckDBPyConnection) -> PreparedRows:
    files = expand(src.path, "datacomp source")
    sql = _reader_sql(files, "parquet")
    columns = _columns(con, sql)
    fix = "a datacomp source reads DataComp's metadata columns uid, url, text, original_width, original_height"
    where = files[0] if len(files) == 1 else src.path
    _require(columns, {"id": "uid", "url": "url", "caption": "text"}, where, fix)
    _require(columns, {"width": "original_width", "height": "original_height"}, where, fix)
    has_sha = "sha256" in columns
    if src.verify_sha256 and not has_sha:
        raise DataError(f"{src.path}: verify_sha256 is set but the metadata has no sha256 column")
    limit = f"LIMIT {src.limit}" if src.limit else ""
    base_all = f"SELECT * FROM {sql} {limit}"
    keep = f"greatest(original_width, original_height) > {src.min_longer_edge}"
    total, kept = con.execute(f"SELECT count(*), count(*) FILTER (WHERE {keep}) FROM ({base_all})").fetchone()
    # img2dataset reserves original_width/height for what it measures: keep the metadata's as meta_*.
    extras = ["uid", "meta_width", "meta_height"] + (["sha256"] if has_sha else [])
    base = (
        f"SELECT uid AS row_id, url, text AS caption, uid, original_width AS meta_width, "
        f"original_height AS meta_height{', sha256' if has_sha else ''} FROM ({base_all}) WHERE {keep}"
    )
    prepared = _validate(con, base, extras)
    prepared.filtered = {f"longer edge <= {src.min_longer_edge} px": int(total - kept)}
    return prepared


# --------------------------------------------------------------------------------------------- gldv2


def _category_name(category_url: str | None) -> str | None:
    if not category_url:
        return None
    name = category_url.rsplit("Category:", 1)[-1]
    from urllib.parse import unquote

    return unquote(name).replace("_", " ").strip() or None


def gldv2_rows(src: GLDv2Source, con: duckdb.DuckDBPyConnection) -> PreparedRows:
    train = _reader_sql(expand(src.train_csv, "gldv2 train_csv"), "csv")
    _require(_columns(con, train), {"id": "id", "url": "url", "landmark_id": "landmark_id"}, src.train_csv)
    limit = f"LIMIT {src.limit}" if src.limit else ""
    con.execute(f"CREATE OR REPLACE TEMP TABLE gld AS SELECT id, url, landmark_id FROM {train} {limit}")
    filtered: dict[str, int] = {}
    if src.clean_csv:
        clean = _reader_sql(expand(src.clean_csv, "gldv2 clean_csv"), "csv")
        _require(_columns(con, clean), {"images": "images"}, src.clean_csv)
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE clean_ids AS "
            f"SELECT DISTINCT unnest(string_split(trim(images), ' ')) AS id FROM {clean}"
        )
        before = con.execute("SELECT count(*) FROM gld").fetchone()[0]
        con.execute("DELETE FROM gld WHERE id NOT IN (SELECT id FROM clean_ids)")
        filtered["not in train_clean.csv"] = before - con.execute("SELECT count(*) FROM gld").fetchone()[0]
    caption = "NULL"
    if src.label_to_category_csv:
        cats = _reader_sql(expand(src.label_to_category_csv, "gldv2 label_to_category_csv"), "csv")
        _require(_columns(con, cats), {"landmark_id": "landmark_id", "category": "category"},
                 src.label_to_category_csv)
        rows = con.execute(f"SELECT landmark_id, category FROM {cats}").fetchall()
        names = pa.table({
            "landmark_id": [r[0] for r in rows],
            "name": [_category_name(r[1]) for r in rows],
        })
        con.register("gld_names", names)
        caption = "(SELECT name FROM gld_names n WHERE n.landmark_id = gld.landmark_id LIMIT 1)"
    base = f"SELECT id AS row_id, url, {caption} AS caption, landmark_id FROM gld"
    prepared = _validate(con, base, ["landmark_id"])
    prepared.filtered = filtered
    return prepared


# ----------------------------------------------------------------------------------- parquet_images


def parquet_images_rows(src: ParquetImagesSource, con: duckdb.DuckDBPyConnection) -> PreparedRows:
    """Rows are references (file, row number): the bytes stay in the input files until the unit runs."""
    files = expand(src.path, "parquet_images source")
    sql = f"read_parquet({sql_list(files)}, union_by_name=true, filename=true, file_row_number=true)"
    columns = _columns(con, sql)
    _require(columns, {"id": src.id_col, "image": src.image_col}, src.path)
    base = (
        f"SELECT {duckdb_ident(src.id_col)} AS row_id, 'file://' || filename || '#' || file_row_number AS url, "
        f"NULL AS caption, "
        f"filename AS file, file_row_number AS file_row FROM {sql}"
    )
    return _validate(con, base, ["file", "file_row"])


# -------------------------------------------------------------------------------- synthetic shapes

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 60, 180), "orange": (245, 140, 30), "white": (245, 245, 245), "black": (20, 20, 20),
}
BACKGROUNDS = {"grey": (128, 128, 128), "beige": (225, 210, 180), "navy": (20, 30, 70), "teal": (30, 110, 110)}
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
SIZES = ("small", "large")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "star":
        pts = [
            (cx + (r if k % 2 == 0 else r * 0.45) * math.sin(k * math.pi / 5),
             cy - (r if k % 2 == 0 else r * 0.45) * math.cos(k * math.pi / 5))
            for k in range(10)
        ]
        draw.polygon(pts, fill=fill)
    elif shape == "cross":
        t = r * 0.35
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)


def synthetic_shape(rng: random.Random, min_side: int, max_side: int, scale: float = 1.0) -> tuple[Image.Image, dict]:
    """One image of a coloured shape on a plain background, with its ground-truth labels."""
    width, height = rng.randint(min_side, max_side), rng.randint(min_side, max_side)
    shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
    background = rng.choice([b for b in BACKGROUNDS if BACKGROUNDS[b] != COLOURS[colour]])
    position, size = rng.choice(POSITIONS), rng.choice(SIZES)
    img = Image.new("RGB", (width, height), BACKGROUNDS[background])
    short = min(width, height)
    r = short * (0.3 if size == "large" else 0.15) * scale * rng.uniform(0.9, 1.1)
    fx = {"left": 0.27, "right": 0.73}.get(position.split()[-1], 0.5)
    fy = {"top": 0.27, "bottom": 0.73}.get(position.split()[0], 0.5)
    cx = fx * width + rng.uniform(-0.04, 0.04) * width
    cy = fy * height + rng.uniform(-0.04, 0.04) * height
    # The whole shape stays in the picture: a square cut by the border is no longer a square.
    r = min(r, 0.95 * min(cx, width - cx, cy, height - cy) - 1.5)
    _draw_shape(ImageDraw.Draw(img), shape, cx, cy, r, COLOURS[colour])
    caption = f"A {size} {colour} {shape} in the {position} of a {background} background."
    labels = {"shape": shape, "colour": colour, "background": background, "position": position, "size": size,
              "width": width, "height": height, "caption": caption}
    return img, labels


def write_synthetic_shapes(src: SyntheticShapesSource, out_dir: Path) -> tuple[pa.Table, pa.Table]:
    """Generate the train and held-out images as PNG files; return their label tables (train, heldout)."""
    rng = random.Random(src.seed)
    tables = []
    for split, count in (("train", src.n), ("heldout", src.heldout)):
        folder = out_dir / ("images" if split == "train" else "heldout")
        folder.mkdir(parents=True, exist_ok=True)
        records = []
        for i in range(count):
            img, labels = synthetic_shape(rng, src.min_side, src.max_side, src.shape_scale)
            path = folder / f"{i:06d}.png"
            img.save(path, "PNG")
            records.append({"row_id": f"{split}-{i:06d}", "file": str(path), "url": path.resolve().as_uri(),
                            "split": split, **labels})
        tables.append(pa.Table.from_pylist(records))
    return tables[0], tables[1]


def synthetic_rows(src: SyntheticShapesSource, out_dir: Path, con: duckdb.DuckDBPyConnection) -> PreparedRows:
    train, heldout = write_synthetic_shapes(src, out_dir)
    pq.write_table(train, out_dir / "labels.parquet")
    pq.write_table(heldout, out_dir / "heldout" / "labels.parquet")
    con.register("shapes_train", train)
    extras = ["shape", "colour", "background", "position", "size"]
    base = f"SELECT row_id, url, caption, {', '.join(extras)} FROM shapes_train"
    return _validate(con, base, extras)
