"""The released VoRA recap parquet as a `parquet_images` source: its captions reach the mixture under
`policy: recap`, the recaption stage captions only the images that carry none, and a broken frame is a
counted download failure."""

import json

import pytest
from realdata import photos
from realdata.vora_recap import CAPTIONS, recap_items, write_recap

from vora_core.catalog import parse_catalog
from vora_core.data.mixture import build_mixture
from vora_core.manifest import open_manifest
from vora_core.stages import download, run_stage
from vora_core.workdir import run_unit_with_marker

FAST = {"batch_size": 4, "max_new_tokens": 8, "min_pixels": 784, "max_pixels": 56 * 56, "concurrency_limit": None,
        "cpu_threads": 1}


def catalog(tmp_path, form, model):
    return parse_catalog({
        "name": "recap", "workdir": str(tmp_path / "run"),
        "sources": {"recap": {"kind": "parquet_images", "path": str(tmp_path / "recap"), "image_col": form,
                              "recaptioned": True}},
        "recaption": {"model": str(model), **FAST},
        "mix": {"pretrain": {"captions": {"policy": "recap"}}, "finetune": {"captions": None}},
    })


def download_all(c):
    for unit in download.prepare_units(c):
        run_unit_with_marker(unit, lambda u: download.run_unit(c, u))
    return [run_unit_with_marker(u, lambda u: download.run_unit(c, u)) for u in download.plan(c)]


@pytest.mark.parametrize("form", ["frames", "image"])
def test_released_captions_reach_the_mixture(tmp_path, form, captioner_dir):
    items = recap_items() + [
        ("recap-00000004", photos.jpeg("motorcycle_left.png"), ""),  # no caption: the model captions it
        ("recap-00000005", photos.truncated_jpeg("hubble_deep_field.jpg"), "A truncated photo."),
        ("recap-00000006", photos.exif_rotated_jpeg("rocket.jpg")[0], "An upright rocket."),
    ]
    write_recap(tmp_path / "recap" / "train-00000-of-00001.parquet", items, form)
    c = catalog(tmp_path, form, captioner_dir)
    (stats,) = download_all(c)
    assert (stats["rows"], stats["successes"], stats["failures"]) == (7, 6, 1)
    run_stage("recaption", c)
    con = open_manifest(c.run)
    try:
        caps = {r: (e, cap) for r, e, cap in con.sql(
            "SELECT i.row_id, c.engine, c.caption FROM captions c JOIN images i USING (sample_id)").fetchall()}
        failures = con.sql("SELECT row_id, status, error FROM download_failures").fetchall()
        rotated = con.sql("SELECT width, height FROM images WHERE row_id = 'recap-00000006'").fetchall()
    finally:
        con.close()
    expected = {f"recap-{n:08d}": ("provided", CAPTIONS[name]) for n, name in enumerate(CAPTIONS)}
    assert {k: v for k, v in caps.items() if v[0] == "provided"} == {
        **expected, "recap-00000006": ("provided", "An upright rocket.")}
    assert caps["recap-00000004"][0] == "hf"  # captioned by the model: it carried no caption
    assert [(r, s) for r, s, _ in failures] == [("recap-00000005", "failed_to_decode")]
    assert failures[0][2].startswith("corrupt or truncated image")
    assert rotated == [(240, 160)]  # EXIF orientation applied: stored sideways as 160 x 240

    build_mixture(c, "pretrain", c.run.mixture("pretrain"))
    con = open_manifest(c.run)
    try:
        got = dict(con.sql("SELECT i.row_id, m.messages[2].content FROM mixture m "
                           "JOIN images i ON i.sample_id = m.image").fetchall())
    finally:
        con.close()
    for row_id, (_, caption) in {**expected, "recap-00000006": ("provided", "An upright rocket.")}.items():
        assert got[row_id] == caption
    funnel = json.loads((c.run.mixture("pretrain") / "stats.json").read_text())["captions"]
    assert funnel["images"] == 6 and funnel["used"] >= 5
    assert funnel["used"] + funnel["no_caption"] + funnel["duplicates"] + funnel["too_small"] == 6


def test_a_fully_captioned_shard_never_loads_the_model(tmp_path):
    write_recap(tmp_path / "recap" / "part.parquet", recap_items(), "frames")
    c = catalog(tmp_path, "frames", tmp_path / "no-such-model")  # loading it would fail
    download_all(c)
    (result,) = run_stage("recaption", c)
    con = open_manifest(c.run)
    try:
        assert con.sql("SELECT count(*), count(*) FILTER (WHERE engine = 'provided') FROM captions").fetchall() == [
            (4, 4)]
    finally:
        con.close()
