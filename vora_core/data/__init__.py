"""Image and text data: sources, download, mixtures, webdataset shards, safe image decoding.

* `sources`   — source kinds → url lists (DuckDB filters before download; rejects with reasons)
* `download`  — the download stage's mechanism (vora_core.stages.download): prepare a source, download a partition
* `mixture`   — the mix stage's mechanism (vora_core.stages.mix): training mixtures in DuckDB SQL
* `shards`    — `ShardWriter` (atomic), `ShardReader` (random access via the tar index), `iter_samples`
* `images`    — `open_rgb` (safe decode to upright RGB), `resize`, `encode`
"""
