"""End to end over the real-schema corpus: `catalogs/real-schemas.yaml` (its `/data/` paths pointed at
small generated copies of the datasets) through download → recaption → mix. Per source the rows add up
(rows = written + rejected, with the expected reasons) and the mixtures resolve every message and
reference only images in the `images` view."""

from __future__ import annotations

import functools
import glob
import json
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import skimage
import yaml

from tests.realdata import datacomp, gldv2, text_sources
from vora_core.catalog import load_catalog
from vora_core.manifest import open_manifest
from vora_core.workdir import read_marker, run_unit_with_marker

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = Path(skimage.__file__).parent / "data"  # real photographs shipped in the scikit-image wheel
DATACOMP_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")
GLDV2_PHOTOS = ("camera.png", "hubble_deep_field.jpg", "motorcycle_left.png")
SMALL = {  # catalogs/-style settings shrunk for 2 CPU cores
    "download": {"image_size": 64, "processes_count": 1, "thread_count": 4, "timeout": 5, "retries": 0,
                 "number_sample_per_shard": 100, "rows_per_unit": 100},
    "recaption": {"engine": "hf", "model": "tiny", "batch_size": 4, "max_new_tokens": 8, "min_pixels": 784,
                  "max_pixels": 56 * 56, "cpu_threads": 1, "concurrency_limit": None},
}


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def photo_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(PHOTOS)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def _rebase(node, data_root: Path):
    """The example catalog's `/data/...` paths → the generated copies under `data_root`."""
    if isinstance(node, dict):
        return {k: _rebase(v, data_root) for k, v in node.items()}
    if isinstance(node, str) and node.startswith("/data/"):
        return str(data_root / node.removeprefix("/data/"))
    return node


def write_corpus(data_root: Path, base: str) -> dict:
    photos = {Path(n).stem: (f"{base}/{n}", (PHOTOS / n).read_bytes()) for n in DATACOMP_PHOTOS}
    _, dc = datacomp.write_datacomp(data_root, photos, f"{base}/gone/0.jpg")
    _, gld = gldv2.write_gldv2(data_root, {Path(n).stem: f"{base}/{n}" for n in GLDV2_PHOTOS}, f"{base}/gone/1.jpg")
    return {"images": {"datacomp": dc, "gldv2": gld}, "text": text_sources.write_text_sources(data_root)}


def make_catalog(tmp_path: Path):
    raw = yaml.safe_load((ROOT / "catalogs" / "real-schemas.yaml").read_text())
    cat = _rebase(raw, tmp_path / "data")
    cat["workdir"] = str(tmp_path / "run")
    for section, settings in SMALL.items():
        cat[section] = {**cat.get(section, {}), **settings}
    path = tmp_path / "real-schemas.yaml"
    path.write_text(yaml.safe_dump(cat, allow_unicode=True))
    return load_catalog(path)


def run_stages(catalog) -> dict[str, list[dict]]:
    from vora_core import mix
    from vora_core.caption import recaption
    from vora_core.data import download

    catalog.write_lock()
    prepared = [run_unit_with_marker(u, lambda u: download.run_prepare(catalog, u))
                for u in download.prepare_units(catalog)]
    fetched = [run_unit_with_marker(u, lambda u: download.run_unit(catalog, u)) for u in download.plan(catalog)]
    captioned = recaption.run_stage(catalog)
    mixed = [run_unit_with_marker(u, lambda u: mix.run_unit(catalog, u)) for u in mix.plan(catalog)]
    return {"prepare": prepared, "download": fetched, "recaption": captioned, "mix": mixed}


def test_the_example_catalog_names_every_corpus_dataset(tmp_path):
    expected = text_sources.write_text_sources(tmp_path / "data")
    catalog = make_catalog(tmp_path)
    assert set(catalog.text_sources) == set(expected)
    assert {n: s.kind for n, s in catalog.sources.items()} == {"datacomp": "datacomp", "gldv2": "gldv2"}
    for name, want in expected.items():  # each path (or glob) finds exactly the dataset's published file
        assert glob.glob(catalog.text_sources[name].path) == [want["path"]], name


def test_download_recaption_mix_over_the_real_schemas(tmp_path, photo_server):
    tmp_path = tmp_path / "o'brien"  # inputs and run directory: every path reaching DuckDB SQL is quoted
    expected = write_corpus(tmp_path / "data", photo_server)
    catalog = make_catalog(tmp_path)
    results = run_stages(catalog)

    # Image sources: input rows = filtered + rejected before download + downloaded + failed.
    prepared = {r["source"]: r for r in results["prepare"]}
    fetched = {r["source"]: r for r in results["download"]}
    con = open_manifest(catalog.run)
    try:
        failures = con.execute("SELECT source, error FROM download_failures ORDER BY source, error").fetchall()
        images = dict(con.execute("SELECT source, count(*) FROM images WHERE status = 'success' GROUP BY ALL").fetchall())
        image_ids = {r[0] for r in con.execute("SELECT sample_id FROM images WHERE status = 'success'").fetchall()}
        alt = dict(con.execute("SELECT row_id, alt_text FROM images WHERE source = 'gldv2'").fetchall())
        no_alt = {r[0] for r in con.execute("SELECT sample_id FROM images WHERE trim(coalesce(alt_text, '')) = ''")
                  .fetchall()}
        untruncated = con.execute("SELECT count(*) FROM captions WHERE NOT list_contains(flags, 'truncated')").fetchall()
        mixture = con.execute("SELECT stage, sample_id, kind, source, image, messages FROM mixture").fetchall()
    finally:
        con.close()
    for name, want in expected["images"].items():
        p, f = prepared[name], fetched[name]
        assert (p["input_rows"], sum(p["filtered"].values()), p["rows"], p["rejected"]) == (
            want["input_rows"], want["filtered"], want["rows"], {}), name
        assert (f["successes"], f["failures"], f["rows"]) == (want["successes"], want["failures"], want["rows"]), name
        assert images[name] == want["successes"]
    assert failures == [("datacomp", "HTTP Error 404: File not found"),
                        ("datacomp", "hash mismatch"),
                        ("gldv2", "HTTP Error 404: File not found")]
    assert alt == expected["images"]["gldv2"]["alt_text"]  # Wikimedia category URLs → names, non-ASCII kept

    # Recaption: one caption per downloaded image.
    assert sum(r["images"] for r in results["recaption"]) == sum(images.values())

    # Text sources: rows = written + rejected, with the expected reasons.
    text = {r["unit"].removeprefix("text:"): r for r in results["mix"] if r["unit"].startswith("text:")}
    assert set(text) == set(expected["text"])
    for name, want in expected["text"].items():
        got = text[name]
        assert (got["rows"], got["written"], got["rejected_by_reason"]) == (
            want["rows"], want["written"], want["rejected"]), name
        assert got["rows"] == got["written"] + got["rejected"]

    # Mixtures: every message resolved, every image one the `images` view holds.
    for stage in ("pretrain", "finetune"):
        rows = [r for r in mixture if r[0] == stage]
        stats = read_marker(catalog.run.mixture(stage))["stats"]
        assert len(rows) == stats["rows"] > 0
        for _, sample_id, kind, _source, image, messages in rows:
            assert messages and all(m["content"].strip() for m in messages), sample_id
            assert messages[-1]["role"] == "assistant"
            assert image is None or image in image_ids, sample_id
            assert (kind == "caption") == (image is not None), sample_id
    pretrain = read_marker(catalog.run.mixture("pretrain"))["stats"]["by_source"]
    assert {k: v for k, v in pretrain.items() if not k.endswith("/caption")} == {
        f"{n}/text": w["written"] for n, w in expected["text"].items()}
    # The tiny captioner's 8-token captions are all flagged `truncated`, so `recap_or_alt` falls back to
    # the alt text: the DataComp photo whose `text` is null is the one image without a caption.
    funnel = json.loads((catalog.run.mixture("pretrain") / "stats.json").read_text())["captions"]
    assert funnel == {"images": 7, "too_small": 0, "no_caption": 1, "duplicates": 0, "used": 6}
    assert sum(v for k, v in pretrain.items() if k.endswith("/caption")) == 6
    assert untruncated == [(0,)]
    assert {r[4] for r in mixture if r[0] == "pretrain" and r[2] == "caption"} == image_ids - no_alt
    assert len(no_alt) == 1
