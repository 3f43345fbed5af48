"""The failure vocabulary: one reason per raw error, the same in Python and in the manifest's SQL."""

from __future__ import annotations

import duckdb

from vora_core.data.failures import REASONS, classify, classify_filter, reason_sql

RAW = {
    "HTTP Error 404: Not Found": "not_found",
    "HTTP Error 410: Gone": "not_found",
    "HTTP Error 403: Forbidden": "http_4xx",
    "HTTP Error 429: Too Many Requests": "http_4xx",
    "HTTP Error 503: Service Unavailable": "http_5xx",
    "The read operation timed out": "timeout",
    "<urlopen error [Errno 111] Connection refused>": "connection_error",
    "<urlopen error [Errno -2] Name or service not known>": "connection_error",
    "Remote end closed connection without response": "connection_error",
    "<urlopen error [Errno 2] No such file or directory: '/data/x.jpg'>": "not_found",
    "<urlopen error unknown url type: ftp>": "unsupported_scheme",
    "unsupported url scheme": "unsupported_scheme",
    "Use of image disallowed by X-Robots-Tag directive": "opted_out",
    "hash mismatch": "hash_mismatch",
    "empty file (zero bytes)": "empty",
    "no image bytes in the row": "empty",
    "null url": "empty",
    "duplicate id": "duplicate",
    "duplicate url": "duplicate",
    "not an image (HTML/XML body)": "decode_error",
    "corrupt or truncated image: broken data stream": "decode_error",
    "decompression bomb: 6000x6000 = 36000000 pixels > limit 1000000": "too_large",
    "image too small": "too_small",
    "aspect ratio too large": "aspect_ratio",
    "something nobody foresaw": "other",
}


def test_python_and_sql_agree_on_every_reason():
    con = duckdb.connect()
    con.execute("CREATE TABLE t (error VARCHAR)")
    con.executemany("INSERT INTO t VALUES (?)", [[e] for e in [*RAW, None]])
    sql = dict(con.execute(f"SELECT error, {reason_sql('error')} FROM t").fetchall())
    assert {e: classify(e) for e in RAW} == RAW
    assert {e: sql[e] for e in RAW} == RAW
    assert (classify(None), sql[None]) == ("other", "other")
    assert set(RAW.values()) <= set(REASONS)


def test_source_filters_are_their_own_reasons():
    assert classify_filter("longer edge <= 448 px") == "filtered_size"
    assert classify_filter("not in train_clean.csv") == "filtered_not_clean"
    assert classify_filter("some new filter") == "filtered_other"
