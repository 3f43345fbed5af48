"""The manifest view `captions`: one row per captioned image, over `captions/<source>/<shard>.parquet`."""

from __future__ import annotations

from vora_core.manifest import View, register_view

COLUMNS = {
    "sample_id": "VARCHAR", "source": "VARCHAR", "shard": "VARCHAR", "key": "VARCHAR", "caption": "VARCHAR",
    "prompt": "VARCHAR", "model": "VARCHAR", "engine": "VARCHAR", "n_tokens": "INTEGER", "seconds": "REAL",
    "finish_reason": "VARCHAR", "flags": "VARCHAR[]", "error": "VARCHAR",
}

CAPTIONS = register_view(View(
    name="captions",
    pattern="captions/*/*.parquet",
    select=r"""
        SELECT sample_id, regexp_extract(filename, '(?:^|/)captions/([^/]+)/[^/]+\.parquet$', 1) AS source,
               regexp_extract(filename, '/([^/]+)\.parquet$', 1) AS shard,
               key, caption, prompt, model, engine, n_tokens, seconds, finish_reason, flags, error
        FROM {src}""",
    empty="SELECT " + ", ".join(f"NULL::{t} AS {c}" for c, t in COLUMNS.items()) + " LIMIT 0",
))
