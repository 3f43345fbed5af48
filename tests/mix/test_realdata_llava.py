"""LLaVA-665K as published (repeated ids, text-only rows, five image folders, broken files) through the
text unit and the mixture: every row kept or rejected with its reason, every image decoded like a
download, and the mixture referencing only images that load."""

import json

import numpy as np
import pyarrow.parquet as pq
from realdata import photos
from realdata.llava import write_llava

from vora_core.catalog import parse_catalog
from vora_core.data.mixture import build_mixture
from vora_core.data.shards import ShardReader
from vora_core.manifest import open_manifest
from vora_core.stages.mix import plan, run_unit
from vora_core.workdir import run_unit_with_marker


def catalog(tmp_path, llava):
    return parse_catalog({
        "name": "l", "workdir": str(tmp_path / "run"), "sources": {"shapes": {"kind": "synthetic_shapes"}},
        "text_sources": {"llava": {"format": "llava", "path": str(llava.json_path), "image_dir": str(llava.image_dir)}},
        "mix": {"pretrain": {"captions": None, "text": {"llava": {"repeat": 1}}}},
    })


def ingest(c):
    (unit,) = [u for u in plan(c) if u.params["kind"] == "text"]
    return run_unit_with_marker(unit, lambda u: run_unit(c, u))


def test_repeated_ids_and_text_only_rows_are_all_kept(tmp_path):
    llava = write_llava(tmp_path, broken=False)
    c = catalog(tmp_path, llava)
    stats = ingest(c)
    assert (stats["rows"], stats["written"], stats["rejected"]) == (10, 10, 0)
    con = open_manifest(c.run)
    try:
        text = con.sql("SELECT sample_id, image FROM text ORDER BY idx").fetchall()
        images = dict(con.sql("SELECT row_id, sample_id FROM images").fetchall())
    finally:
        con.close()
    # One sample per row (its row number: LLaVA's id repeats); one stored image per file.
    assert [s for s, _ in text] == [f"llava/{n:09d}" for n in range(10)]
    assert [i for _, i in text] == [images.get(r.get("image")) for r in llava.rows]
    assert sorted(images) == sorted({r["image"] for r in llava.rows if "image" in r})
    coco = images["coco/train2017/000000033471.jpg"]
    assert [i for _, i in text[:3]] == [coco, coco, coco]
    assert text[3][1] is None and text[8][1] is None  # text-only rows


def test_broken_images_are_rejects_and_never_reach_the_mixture(tmp_path):
    llava = write_llava(tmp_path)
    c = catalog(tmp_path, llava)
    stats = ingest(c)
    assert (stats["rows"], stats["written"], stats["rejected"]) == (14, 10, 4)
    assert stats["rejected_by_reason"] == {"bad_image": 4}
    con = open_manifest(c.run)
    try:
        rejects = con.sql("SELECT row, reason, detail FROM text_rejects ORDER BY row").fetchall()
        failures = con.sql("SELECT row_id, status, error FROM download_failures ORDER BY row_id").fetchall()
        sizes = {r: (w, h) for r, w, h in con.sql("SELECT row_id, width, height FROM images").fetchall()}
    finally:
        con.close()
    truncated = "ocr_vqa/images/1400319961.jpg: corrupt or truncated image: image file is truncated"
    assert [(r, reason) for r, reason, _ in rejects] == [(10, "bad_image"), (11, "bad_image"), (12, "bad_image"),
                                                          (13, "bad_image")]
    assert [d.split(" (")[0] for _, _, d in rejects] == [
        truncated, truncated,
        "vg/VG_100K_2/2400001.jpg: decompression bomb: 20000x20000 = 400000000 pixels > limit 89478485",
        "vg/VG_100K_2/2400002.png: decompression bomb: 12000x12000 = 144000000 pixels > limit 89478485"]
    # The files are rows of the shard's table with their error (view download_failures), stored once each.
    assert [(r, s) for r, s, _ in failures] == [("ocr_vqa/images/1400319961.jpg", "failed_to_decode"),
                                               ("vg/VG_100K_2/2400001.jpg", "failed_to_decode"),
                                               ("vg/VG_100K_2/2400002.png", "failed_to_decode")]
    # The GIF named .jpg: its first frame, re-encoded; the EXIF-rotated JPEG: upright (stored 160 x 240).
    assert sizes["ocr_vqa/images/140031996.jpg"] == (14, 25)
    assert sizes["textvqa/train_images/0054c91397f2fe05.jpg"] == (240, 160)

    build_mixture(c, "pretrain", c.run.mixture("pretrain"))
    con = open_manifest(c.run)
    try:
        used = con.sql("SELECT m.image, i.shard, i.key FROM mixture m LEFT JOIN images i ON i.sample_id = m.image "
                       "WHERE m.image IS NOT NULL").fetchall()
        (rotated,) = con.sql("SELECT shard, key FROM images WHERE row_id LIKE 'textvqa/%'").fetchall()
    finally:
        con.close()
    assert len(used) == 8 and all(key is not None for _, _, key in used)  # every image is in the images view
    for _, shard, key in used:  # ... and loads, as the training loader reads it
        with ShardReader(c.run.shards("llava") / f"{shard}.tar") as reader:
            assert reader.image(key).size == sizes[reader.meta(key)["image"]]
    with ShardReader(c.run.shards("llava") / f"{rotated[0]}.tar") as reader:
        got = np.asarray(reader.image(rotated[1]), dtype=np.float32)
    upright = np.asarray(photos.exif_rotated_jpeg("rocket.jpg")[1], dtype=np.float32)
    assert np.abs(got - upright).mean() < 8  # the same picture, upright (JPEG re-encoding differs slightly)
    stats = json.loads((c.run.mixture("pretrain") / "stats.json").read_text())
    assert stats["rows"] == 10
    rows = pq.read_table(c.run.shards("llava") / "00000.parquet").to_pylist()
    assert len(rows) == 8 and sum(r["status"] == "success" for r in rows) == 5


def test_rows_whose_image_left_the_images_view_are_left_out_and_counted(tmp_path):
    """The llava unit's marker lives in text/: after `rm -r <run>/shards` (to download again) it is
    still done, so its rows name images no shard holds. The mixture leaves them out as `image_missing`
    instead of handing them to the training loader."""
    import shutil

    llava = write_llava(tmp_path, broken=False)
    c = catalog(tmp_path, llava)
    ingest(c)
    shutil.rmtree(c.run.shards("llava"))
    (text_unit,) = [u for u in plan(c) if u.params["kind"] == "text"]
    assert text_unit.done  # not redone: the rows keep naming the removed images
    stats = build_mixture(c, "pretrain", c.run.mixture("pretrain"))
    assert (stats["rows"], stats["by_source"]) == (2, {"llava/text": 2})
    assert stats["left_out"] == {"image_missing": 8}
    written = json.loads((c.run.mixture("pretrain") / "stats.json").read_text())
    assert (written["text_rows_available"], written["text_rows_used"], written["text_rows_left_out"]) == (
        {"llava": 10}, {"llava": 2}, {"llava": {"image_missing": 8}})
    con = open_manifest(c.run)
    try:
        assert con.sql("SELECT sample_id, image FROM mixture ORDER BY ALL").fetchall() == [
            ("llava/000000003", None), ("llava/000000008", None)]
    finally:
        con.close()
