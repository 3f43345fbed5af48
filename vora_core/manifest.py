"""The run's DuckDB manifest: views over the parquet files every stage writes.

`manifest.duckdb` holds only view definitions, so it can be deleted and rebuilt at any time; the
parquet files are the data. The views name their files relative to the run directory, so a copied or
moved run directory still opens: `open_manifest` points DuckDB's `file_search_path` at it (a DuckDB
started in the run directory needs nothing). The same definitions are written as plain SQL to
`manifest.sql`, which any DuckDB version can run from the run directory (`duckdb -init manifest.sql`).
Base views read a glob of files (or are empty, with the right columns,
while no file exists yet); derived views are SQL over other views. Stages register their own views
with `register_view`. One process at a time writes the file (DuckDB's own lock; we retry briefly).
"""

from __future__ import annotations

import glob
import importlib
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb

from vora_core.data.failures import reason_sql
from vora_core.errors import DataError
from vora_core.workdir import RunDir, atomic_path


@dataclass(frozen=True)
class View:
    """`select` is SQL over `{src}` (the files matching `pattern`, under the run root) — or over other
    views when `pattern` is None. `empty` gives the same columns and no rows."""

    name: str
    select: str
    empty: str
    pattern: str | None = None


VIEWS: dict[str, View] = {}
_DEFINITIONS = "_vora_view_definitions"  # the SQL each view was last created with
# Modules that register the views of later stages; imported when the manifest is opened so that every
# process (the CLI's `vora status`, the mix stage, ...) sees every view.
VIEW_MODULES = ("vora_core.caption.views", "vora_core.data.text_views")


def register_view(view: View) -> View:
    VIEWS[view.name] = view
    return view


def empty_select(columns: dict[str, str]) -> str:
    """A typed query with no rows: a view's stand-in while it has no files."""
    return "SELECT " + ", ".join(f"NULL::{t} AS {c}" for c, t in columns.items()) + " LIMIT 0"


SHARD_ROW_COLUMNS = {
    "source": "VARCHAR", "shard": "VARCHAR", "key": "VARCHAR", "row_id": "VARCHAR", "url": "VARCHAR",
    "caption": "VARCHAR", "status": "VARCHAR", "error_message": "VARCHAR", "width": "INTEGER",
    "height": "INTEGER", "original_width": "INTEGER", "original_height": "INTEGER", "sha256": "VARCHAR",
}

register_view(View(
    name="shard_rows",
    pattern="shards/*/?????.parquet",
    select=r"""
        SELECT regexp_extract(filename, '(?:^|/)shards/([^/]+)/\d+\.parquet$', 1) AS source,
               regexp_extract(filename, '/(\d+)\.parquet$', 1) AS shard,
               key, row_id, url, caption, status, error_message,
               width::INTEGER AS width, height::INTEGER AS height,
               original_width::INTEGER AS original_width, original_height::INTEGER AS original_height, sha256
        FROM {src}""",
    empty=empty_select(SHARD_ROW_COLUMNS),
))
register_view(View(
    name="source_rejects",
    pattern="sources/*/rejects.parquet",
    select=r"""
        SELECT regexp_extract(filename, '(?:^|/)sources/([^/]+)/rejects\.parquet$', 1) AS source, row_id, url, reason
        FROM {src}""",
    empty=empty_select({"source": "VARCHAR", "row_id": "VARCHAR", "url": "VARCHAR", "reason": "VARCHAR"}),
))
register_view(View(
    name="images",
    select="""
        SELECT source || '/' || key AS sample_id, source, shard, key, row_id, url, caption AS alt_text,
               width, height, sha256, status, error_message AS error
        FROM shard_rows WHERE status = 'success'""",
    empty="",
))
register_view(View(
    name="download_failures",
    select="""
        SELECT source, shard, key, row_id, url, status, """ + reason_sql("error_message") + """ AS reason,
               error_message AS error
        FROM shard_rows WHERE status <> 'success'
        UNION ALL
        SELECT source, NULL, NULL, row_id, url, 'rejected', """ + reason_sql("reason") + """, reason
        FROM source_rejects""",
    empty="",
))
register_view(View(
    name="shards",
    select="""
        SELECT source, shard, count(*) AS rows, count(*) FILTER (WHERE status = 'success') AS successes,
               count(*) FILTER (WHERE status <> 'success') AS failures
        FROM shard_rows GROUP BY source, shard""",
    empty="",
))


MANIFEST_SQL = "manifest.sql"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _source_sql(root: Path, pattern: str) -> str | None:
    """The glob relative to the run directory (so the view sees files added later, wherever the run
    directory lies), or None while nothing matches."""
    if not glob.glob(str(root / pattern)):
        return None
    return f"read_parquet({_quote(pattern)}, filename=true, union_by_name=true)"


def _write_sql(root: Path, wanted: dict[str, str]) -> None:
    text = ("-- The run's DuckDB views (vora_core.manifest). Paths are relative to this directory: run it\n"
            "-- from here, e.g. `duckdb -init manifest.sql` or `duckdb -c '.read manifest.sql'`.\n")
    text += "".join(f"CREATE OR REPLACE VIEW {name} AS {sql.strip()};\n" for name, sql in wanted.items())
    path = root / MANIFEST_SQL
    if not path.exists() or path.read_text() != text:
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text)


def search_path(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """Resolve the views' relative paths against the run directory, whatever the process's CWD."""
    if "," in str(root):  # the setting is a comma-separated list
        raise DataError(f"run directory {root}: DuckDB's file_search_path cannot hold a ',': rename it")
    con.execute(f"SET GLOBAL file_search_path = {_quote(str(root))}")  # cursors too


def define_views(con: duckdb.DuckDBPyConnection, root: Path) -> None:
    """(Re)create every registered view over what is on disk now (base views first)."""
    root = root.resolve()
    for module in VIEW_MODULES:
        importlib.import_module(module)
    wanted: dict[str, str] = {}
    for view in sorted(VIEWS.values(), key=lambda v: v.pattern is None):
        if view.pattern is None:
            sql = view.select
        else:
            src = _source_sql(root, view.pattern)
            sql = view.select.replace("{src}", src) if src else view.empty
        wanted[view.name] = sql
    _write_sql(root, wanted)
    # Unchanged definitions are left alone, so a rerun that changes nothing leaves the file untouched.
    try:
        have = dict(con.execute(f"SELECT name, sql FROM {_DEFINITIONS} ORDER BY seq").fetchall())
        present = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    except duckdb.CatalogException:
        have, present = {}, set()
    if have == wanted and present >= set(wanted):
        return
    for name, sql in wanted.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")
    con.execute(f"CREATE OR REPLACE TABLE {_DEFINITIONS} (seq INTEGER, name VARCHAR, sql VARCHAR)")
    con.executemany(f"INSERT INTO {_DEFINITIONS} VALUES (?, ?, ?)",
                    [(i, name, sql) for i, (name, sql) in enumerate(wanted.items())])


def open_manifest(
    run: RunDir, read_only: bool = False, memory_limit: str = "2GB", threads: int = 2
) -> duckdb.DuckDBPyConnection:
    """Open `<workdir>/manifest.duckdb` with every view rebuilt (unless read_only)."""
    run.ensure()
    for attempt in range(50):
        try:
            con = duckdb.connect(str(run.manifest), read_only=read_only and run.manifest.exists())
            break
        except duckdb.IOException:  # another process holds the write lock: wait for it
            if attempt == 49:
                raise
            time.sleep(0.2)
    con.execute(f"SET memory_limit='{memory_limit}'; SET threads={threads}")
    search_path(con, run.root.resolve())
    if not read_only:
        define_views(con, run.root)
    return con


def query(run: RunDir, sql: str) -> list[tuple]:
    con = open_manifest(run)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()
