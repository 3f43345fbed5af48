"""Image and text data: sources, the download stage, webdataset shards, safe image decoding.

* `sources`   — source kinds → url lists (DuckDB filters before download; rejects with reasons)
* `download`  — the download stage: `prepare_units/run_prepare`, `plan/run_unit`, `summary`
* `shards`    — `ShardWriter` (atomic), `ShardReader` (random access via the tar index), `iter_samples`
* `images`    — `open_rgb` (safe decode to upright RGB), `resize`, `encode`
"""
