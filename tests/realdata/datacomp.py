"""A DataComp-1B metadata parquet with the published columns, types and quirks, over given photos.

Published schema (datacomp `metadata/*.parquet`): uid (32 hex chars), url, text (alt text: may be
null, non-English, HTML-escaped), original_width / original_height (int64, what the crawler saw),
clip_b32_similarity_score / clip_l14_similarity_score (float64), face_bboxes (list of [x1, y1, x2, y2]
fractions, empty for most images), sha256 (of the original bytes).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

COLUMNS = ("uid", "url", "text", "original_width", "original_height", "clip_b32_similarity_score",
           "clip_l14_similarity_score", "face_bboxes", "sha256")
SCHEMA = pa.schema([("uid", pa.string()), ("url", pa.string()), ("text", pa.string()),
                    ("original_width", pa.int64()), ("original_height", pa.int64()),
                    ("clip_b32_similarity_score", pa.float64()), ("clip_l14_similarity_score", pa.float64()),
                    ("face_bboxes", pa.list_(pa.list_(pa.float64()))), ("sha256", pa.string())])
TEXTS = ["Astronaut Eileen Collins, official NASA portrait", "café au lait &amp; croissant sur la table",
         None, "Кот сидит на подоконнике", "カメラマン 写真 モノクロ", "  ", "coffee cup on a saucer, top view",
         "rocket on the launch pad at sunrise", "Hubble deep field galaxies"]


def write_datacomp(folder: Path, photos: dict[str, tuple[str, bytes]], missing_url: str) -> tuple[Path, dict]:
    """photos: name → (url, bytes). Returns the parquet and the expected counts of a `datacomp` source
    with `min_longer_edge: 448, verify_sha256: true`."""
    rows = []
    for i, (name, (url, body)) in enumerate(sorted(photos.items())):
        rows.append({
            "uid": hashlib.md5(name.encode()).hexdigest(), "url": url, "text": TEXTS[i % len(TEXTS)],
            "original_width": 1024 - 37 * i, "original_height": 683 + 11 * i,
            "clip_b32_similarity_score": round(0.21 + 0.013 * i, 6),
            "clip_l14_similarity_score": round(0.19 + 0.011 * i, 6),
            "face_bboxes": [[0.31, 0.12, 0.58, 0.49]] if name == "astronaut" else [],
            "sha256": hashlib.sha256(body).hexdigest(),
        })
    # The longer-edge rule runs on the metadata, before any download: these two never leave the parquet.
    rows.append({**rows[0], "uid": "0" * 31 + "1", "url": rows[0]["url"] + "?small=1", "original_width": 320,
                 "original_height": 240})
    rows.append({**rows[1], "uid": "0" * 31 + "2", "url": rows[1]["url"] + "?small=2", "original_width": 448,
                 "original_height": 448})
    # A dead link (most of DataComp's are) and bytes that changed since the crawl (sha256 mismatch).
    rows.append({**rows[2], "uid": "0" * 31 + "3", "url": missing_url})
    rows.append({**rows[3], "uid": "0" * 31 + "4", "url": rows[3]["url"] + "?changed=1", "sha256": "0" * 64})
    path = folder / "datacomp" / "metadata" / "0000000.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path)
    return path, {"input_rows": len(rows), "filtered": 2, "rows": len(rows) - 2, "successes": len(photos),
                  "failures": 2}
