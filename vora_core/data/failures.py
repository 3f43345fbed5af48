"""Why a row failed, as a small fixed vocabulary (the raw error stays beside it as the detail).

Raw errors hold urls, paths and exception text, so grouping by them gives unbounded buckets. Each row's
(status, error) is mapped to one reason by the first matching rule below; the same rules render as
Python (`classify`, for unit stats) and as a SQL CASE (`REASON_SQL`, for the `download_failures` view),
so the two never disagree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

# (reason, regex on the raw error, case-insensitive). Order matters: the first match wins.
RULES: tuple[tuple[str, str], ...] = (
    ("duplicate", r"^duplicate (id|url)$"),
    ("unsupported_scheme", r"^unsupported url scheme$|unknown url type|unsupported scheme"),
    ("empty", r"^(null url|empty url|null or empty id)$|^empty file|no image bytes"),
    ("hash_mismatch", r"hash mismatch"),
    ("not_found", r"http error 404|http error 410|no such file or directory"),
    ("http_4xx", r"http error 4\d\d"),
    ("http_5xx", r"http error 5\d\d"),
    ("timeout", r"timed out|timeout"),
    ("connection_error", r"connection|remote end closed|reset by peer|name or service not known|"
                         r"temporary failure in name resolution|nodename nor servname|ssl|eof occurred"),
    ("opted_out", r"disallowed by x-robots-tag"),
    ("too_large", r"decompression bomb"),
    ("too_small", r"image too small"),
    ("aspect_ratio", r"aspect ratio too large"),
    ("decode_error", r"not an image|corrupt or truncated|unreadable image header|invalid image size|decod"),
)
OTHER = "other"
# Rows a source's own filter leaves out on purpose (counted in prepared.json, not failures).
FILTER_RULES: tuple[tuple[str, str], ...] = (
    ("filtered_size", r"longer edge"),
    ("filtered_not_clean", r"not in train_clean"),
)
REASONS: tuple[str, ...] = (*(r for r, _ in RULES), OTHER, *(r for r, _ in FILTER_RULES), "filtered_other")

_COMPILED = [(reason, re.compile(pattern, re.IGNORECASE)) for reason, pattern in RULES]


def classify(error: str | None) -> str:
    """The reason of one failed row from its raw error (None or unmatched: `other`)."""
    for reason, pattern in _COMPILED:
        if error and pattern.search(error):
            return reason
    return OTHER


def classify_filter(label: str) -> str:
    for reason, pattern in FILTER_RULES:
        if re.search(pattern, label, re.IGNORECASE):
            return reason
    return "filtered_other"


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def reason_sql(column: str) -> str:
    """A DuckDB CASE expression giving the reason of the raw error in `column`."""
    whens = " ".join(
        f"WHEN regexp_matches({column}, {_sql_literal(pattern)}, 'i') THEN {_sql_literal(reason)}"
        for reason, pattern in RULES
    )
    return f"CASE {whens} ELSE {_sql_literal(OTHER)} END"


def failure_report(con: Any, stage: str, rows: int, failures: str, columns: Sequence[str], order: str,
                   view: str, examples: int = 5, params: Sequence[Any] = ()) -> dict:
    """A stage's failures report, the shape every stage's `failure_report` returns (and the flows'
    `check_failures` reads): `{stage, rows, failed, share, view, reasons: [{reason, count, share,
    examples}]}`, reasons by count (then name), each with up to `examples` rows of `columns` in `order`.

    `failures` is a FROM item (SQL over the manifest views, `params` filling its `?`) with a `reason`
    column, one row per failed row; `rows` counts the rows attempted (the shares' base); `view` names
    where an operator finds every failed row."""
    counts = con.execute(f"SELECT reason, count(*) AS n FROM {failures} GROUP BY reason ORDER BY n DESC, reason",
                         list(params)).fetchall()
    picked = con.execute(
        f"SELECT reason, {', '.join(columns)} FROM (SELECT *, row_number() OVER (PARTITION BY reason ORDER BY "
        f"{order}) AS i FROM {failures}) WHERE i <= ? ORDER BY reason, i", [*params, examples]).fetchall()
    failed = sum(n for _, n in counts)
    by_reason = {r: {"reason": r, "count": n, "share": round(n / rows, 4) if rows else 0.0, "examples": []}
                 for r, n in counts}
    for reason, *values in picked:
        by_reason[reason]["examples"].append(dict(zip(columns, values, strict=True)))
    return {"stage": stage, "rows": rows, "failed": failed, "share": round(failed / rows, 4) if rows else 0.0,
            "view": view, "reasons": list(by_reason.values())}
