"""`vora sql`: a query over the run's manifest views, shown as a table that fits the terminal, or a
small interactive prompt (statements end with `;`)."""

from __future__ import annotations

import sys
from typing import TextIO

import duckdb

from vora_core.errors import VoraError

PROMPT, MORE = "vora-sql> ", "      ..> "


class QueryError(VoraError):
    """DuckDB rejected the query (the message is DuckDB's, in one line)."""


def show(con: duckdb.DuckDBPyConnection, query: str, width: int = 80, rows: int = 40) -> None:
    """Run `query`; print its result (if it has one) in at most `width` columns and `rows` rows."""
    try:
        relation = con.sql(query)
        if relation is not None:
            relation.show(max_width=width, max_rows=rows)
    except duckdb.Error as e:
        raise QueryError(" ".join(str(e).split())) from None


def repl(con: duckdb.DuckDBPyConnection, width: int = 80, rows: int = 40, stdin: TextIO | None = None) -> None:
    """Read statements until end of input (Ctrl-D) or `.quit`; an error is shown and the prompt goes on."""
    stdin = stdin or sys.stdin
    tty = stdin.isatty()
    if tty:
        views = [r[0] for r in con.execute(
            "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1").fetchall()]
        print(f"views: {', '.join(views)}\nend a statement with ';' — Ctrl-D or .quit to leave")
    buffer: list[str] = []
    while True:
        if tty:
            sys.stdout.write(MORE if buffer else PROMPT)
            sys.stdout.flush()
        line = stdin.readline()
        if not line:
            break
        if not buffer and line.strip() in (".quit", ".exit"):
            break
        buffer.append(line)
        statement = "".join(buffer).strip()
        if statement.endswith(";"):
            buffer.clear()
            try:
                show(con, statement, width, rows)
            except QueryError as e:
                print(f"error: {e}")
    if "".join(buffer).strip():
        try:
            show(con, "".join(buffer), width, rows)
        except QueryError as e:
            print(f"error: {e}")
