"""Every awkward input is a valid RGB sample or a counted failure with its reason; counts add up."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.conftest import awkward_images, closed_port, make_catalog, run_download
from vora_core.data.shards import ShardReader
from vora_core.manifest import open_manifest

pytestmark = pytest.mark.slow


def test_awkward_inputs_over_http_and_file(tmp_path, http_server):
    base, served = http_server
    bodies = awkward_images()
    served.update(bodies)
    folder = tmp_path / "files"
    folder.mkdir()
    rows = []
    for name, body in bodies.items():
        (folder / name).write_bytes(body)
        rows.append({"id": f"http-{name}", "url": f"{base}/{name}", "text": name})
        rows.append({"id": f"file-{name}", "url": (folder / name).as_uri(), "text": name})
    rows += [
        {"id": "http-404", "url": f"{base}/missing.jpg", "text": None},
        {"id": "http-slow", "url": f"{base}/slow", "text": None},
        {"id": "http-drop", "url": f"{base}/drop", "text": None},
        {"id": "http-refused", "url": f"http://127.0.0.1:{closed_port()}/x.jpg", "text": None},
        {"id": "file-missing", "url": (folder / "nope.jpg").as_uri(), "text": None},
        {"id": "null-url", "url": None, "text": None},
        {"id": "empty-url", "url": "  ", "text": None},
        {"id": "dup-url", "url": f"{base}/ok.jpg", "text": None},
        {"id": "http-ok.jpg", "url": f"{base}/one.png", "text": None},  # duplicate id
        {"id": "ftp", "url": "ftp://example.org/a.jpg", "text": None},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
    catalog = make_catalog(
        tmp_path,
        {"web": {"kind": "url_list", "path": str(tmp_path / "urls.parquet"), "id_col": "id", "caption_col": "text"}},
        encode_format="png", max_image_area=1_000_000,
    )
    results = run_download(catalog)
    assert [r["rows"] for r in results] == [len(rows) - 5]

    con = open_manifest(catalog.run)
    ok = dict(con.execute("SELECT row_id, (width, height) FROM images").fetchall())
    failed = dict(con.execute("SELECT row_id, error FROM download_failures").fetchall())
    reason = dict(con.execute("SELECT row_id, reason FROM download_failures WHERE row_id <> 'http-ok.jpg'").fetchall())
    dup_id = con.execute("SELECT url, error FROM download_failures WHERE row_id = 'http-ok.jpg'").fetchall()
    total = con.execute("SELECT (SELECT count(*) FROM images) + (SELECT count(*) FROM download_failures)").fetchone()
    keys = dict(con.execute("SELECT row_id, key FROM images").fetchall())
    con.close()
    assert total[0] == len(rows)  # every input row is in exactly one place
    # the only id in both places is the duplicate: its first row downloaded, its second rejected
    assert set(ok) & set(failed) == {"http-ok.jpg"}
    assert dup_id == [(f"{base}/one.png", "duplicate id")]
    del failed["http-ok.jpg"]

    good = [n for n in bodies if not n.startswith("bad-")]
    assert set(ok) == {f"{p}-{n}" for p in ("http", "file") for n in good}
    for prefix in ("http", "file"):
        assert ok[f"{prefix}-exif6.jpg"] == (40, 60)  # EXIF orientation applied: 60x40 stored, shown upright
        assert ok[f"{prefix}-one.png"] == (1, 1)
        assert ok[f"{prefix}-thin.png"] == (1, 64)  # longer side resized to image_size
        assert ok[f"{prefix}-ok.jpg"] == (60, 40)  # never upscaled (resize_only_if_bigger)
        assert failed[f"{prefix}-bad-zero.jpg"] == "empty file (zero bytes)"
        assert failed[f"{prefix}-bad-page.jpg"] == "not an image (HTML/XML body)"
        assert failed[f"{prefix}-bad-truncated.jpg"].startswith("corrupt or truncated image")
        assert failed[f"{prefix}-bad-bomb.png"] == (
            "decompression bomb: 6000x6000 = 36000000 pixels > limit 1000000"
        )
    assert failed["http-404"] == "HTTP Error 404: Not Found"
    assert "timed out" in failed["http-slow"]
    assert "Connection refused" in failed["http-refused"]
    assert "Remote end closed connection" in failed["http-drop"] or "reset" in failed["http-drop"]
    assert "No such file or directory" in failed["file-missing"]
    assert failed["null-url"] == "null url"
    assert failed["empty-url"] == "empty url"
    assert failed["dup-url"] == "duplicate url"
    assert failed["ftp"] == "unsupported url scheme"
    # Each raw error maps to one reason of the fixed vocabulary (the raw text stays in `error`).
    assert reason == {
        **{f"{p}-bad-{n}": r for p in ("http", "file") for n, r in (
            ("zero.jpg", "empty"), ("page.jpg", "decode_error"), ("truncated.jpg", "decode_error"),
            ("bomb.png", "too_large"))},
        "http-404": "not_found", "http-slow": "timeout", "http-refused": "connection_error",
        "http-drop": "connection_error", "file-missing": "not_found", "null-url": "empty", "empty-url": "empty",
        "dup-url": "duplicate", "ftp": "unsupported_scheme",
    }

    # Stored samples decode to RGB with the right pixels.
    shard = catalog.run.shards("web") / "00000.tar"
    with ShardReader(shard) as reader:
        gray = reader.image(keys["file-gray16.png"])
        assert gray.mode == "RGB"
        assert gray.getpixel((5, 5)) == (255, 255, 255)  # 65535 → 255, not clipped garbage
        assert gray.getpixel((50, 5)) == (128, 128, 128)  # 32896 / 65535 * 255 = 128.0
        for name in ("cmyk.jpg", "palette.png", "la.png"):
            assert reader.image(keys[f"http-{name}"]).mode == "RGB"
        assert reader.meta(keys["http-ok.jpg"])["caption"] == "ok.jpg"
