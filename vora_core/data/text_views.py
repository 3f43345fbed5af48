"""Manifest views of the mix stage: `text`, `text_rejects`, `mixture`."""

from __future__ import annotations

from vora_core.manifest import View, register_view

_MESSAGES = "STRUCT(role VARCHAR, content VARCHAR)[]"


def _empty(columns: dict[str, str]) -> str:
    return "SELECT " + ", ".join(f"NULL::{t} AS {c}" for c, t in columns.items()) + " LIMIT 0"


register_view(View(
    name="text",
    pattern="text/*/part-*.parquet",
    select="SELECT sample_id, source, idx, image, messages FROM {src}",
    empty=_empty({"sample_id": "VARCHAR", "source": "VARCHAR", "idx": "BIGINT", "image": "VARCHAR",
                  "messages": _MESSAGES}),
))
register_view(View(
    name="text_rejects",
    pattern="text/*/rejects.parquet",
    select="SELECT source, row, id, reason, detail FROM {src}",
    empty=_empty({"source": "VARCHAR", "row": "BIGINT", "id": "VARCHAR", "reason": "VARCHAR", "detail": "VARCHAR"}),
))
register_view(View(
    name="mixture",
    pattern="mixture/*/part-*.parquet",
    select=r"""
        SELECT regexp_extract(filename, '/mixture/([^/]+)/[^/]+\.parquet$', 1) AS stage, * EXCLUDE (filename)
        FROM {src}""",
    empty=_empty({"stage": "VARCHAR", "sample_id": "VARCHAR", "kind": "VARCHAR", "source": "VARCHAR",
                  "image": "VARCHAR", "messages": _MESSAGES, "weight_source": "VARCHAR"}),
))
