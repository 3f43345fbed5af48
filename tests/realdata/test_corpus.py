"""End to end over the real-schema corpus: `catalogs/real-schemas.yaml` (its `/data/` paths pointed at
small generated copies of the datasets: DataComp-1B, GLDv2, the released VoRA recap parquet,
LLaVA-665K and nine text datasets) through download → recaption → mix. Per source the rows add up
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

from tests.realdata import datacomp, gldv2, llava, photos, text_sources, vora_recap
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
    served = {Path(n).stem: (f"{base}/{n}", (PHOTOS / n).read_bytes()) for n in DATACOMP_PHOTOS}
    _, dc = datacomp.write_datacomp(data_root, served, f"{base}/gone/0.jpg")
    _, gld = gldv2.write_gldv2(data_root, {Path(n).stem: f"{base}/{n}" for n in GLDV2_PHOTOS}, f"{base}/gone/1.jpg")
    # The released recap parquet: four captioned photos, one the model must caption, one broken frame.
    recap = vora_recap.recap_items() + [("recap-00000004", photos.jpeg("motorcycle_left.png"), ""),
                                        ("recap-00000005", photos.truncated_jpeg("hubble_deep_field.jpg"), "Cut.")]
    recap_file = vora_recap.write_recap(data_root / "vora-recap" / "train-00000-of-00001.parquet", recap)
    rc = {"path": str(recap_file), "input_rows": 6, "filtered": 0, "rows": 6, "successes": 5, "failures": 1,
          "captions": {i: c for i, _, c in recap if c and i != "recap-00000005"}}
    # LLaVA-665K: 14 rows (a COCO id thrice, two text-only rows), 8 distinct files of which 3 are broken.
    lv = llava.write_llava(data_root / "llava")
    text = text_sources.write_text_sources(data_root)
    text["llava_665k"] = {"path": str(lv.json_path), "image_dir": str(lv.image_dir), "rows": 14, "written": 10,
                          "rejected": {"bad_image": 4}, "vqa": 8}
    return {"images": {"datacomp": dc, "gldv2": gld, "vora_recap": rc}, "text": text}


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
    from vora_core.stages import download, mix, run_stage

    catalog.write_lock()
    prepared = [run_unit_with_marker(u, lambda u: download.run_unit(catalog, u))
                for u in download.prepare_units(catalog)]
    fetched = [run_unit_with_marker(u, lambda u: download.run_unit(catalog, u)) for u in download.plan(catalog)]
    captioned = run_stage("recaption", catalog)
    mixed = [run_unit_with_marker(u, lambda u: mix.run_unit(catalog, u)) for u in mix.plan(catalog)]
    return {"prepare": prepared, "download": fetched, "recaption": captioned, "mix": mixed}


def test_the_example_catalog_names_every_corpus_dataset(tmp_path):
    expected = write_corpus(tmp_path / "data", "http://127.0.0.1:9")
    catalog = make_catalog(tmp_path)
    assert set(catalog.text_sources) == set(expected["text"])
    assert {n: s.kind for n, s in catalog.sources.items()} == {
        "datacomp": "datacomp", "gldv2": "gldv2", "vora_recap": "parquet_images"}
    for name, want in expected["text"].items():  # each path (or glob) finds exactly the dataset's published file
        assert glob.glob(catalog.text_sources[name].path) == [want["path"]], name
    assert catalog.text_sources["llava_665k"].image_dir == expected["text"]["llava_665k"]["image_dir"]
    assert glob.glob(catalog.sources["vora_recap"].path) == [expected["images"]["vora_recap"]["path"]]


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
        failures = con.execute("SELECT source, row_id, status, error FROM download_failures ORDER BY ALL").fetchall()
        images = dict(con.execute(
            "SELECT source, count(*) FROM images WHERE status = 'success' GROUP BY ALL").fetchall())
        image_ids = {r[0] for r in con.execute("SELECT sample_id FROM images WHERE status = 'success'").fetchall()}
        alt = dict(con.execute("SELECT row_id, alt_text FROM images WHERE source = 'gldv2'").fetchall())
        recap_ids = dict(con.execute("SELECT sample_id, row_id FROM images WHERE source = 'vora_recap'").fetchall())
        no_alt = {r[0] for r in con.execute("SELECT sample_id FROM images WHERE trim(coalesce(alt_text, '')) = ''")
                  .fetchall()}
        engines = con.execute("SELECT engine, count(*), count(*) FILTER (WHERE list_contains(flags, 'truncated')) "
                              "FROM captions GROUP BY ALL ORDER BY ALL").fetchall()
        mixture = con.execute("SELECT stage, sample_id, kind, source, image, messages FROM mixture").fetchall()
    finally:
        con.close()
    for name, want in expected["images"].items():
        p, f = prepared[name], fetched[name]
        assert (p["input_rows"], sum(p["filtered"].values()), p["rows"], p["rejected"]) == (
            want["input_rows"], want["filtered"], want["rows"], {}), name
        assert (f["successes"], f["failures"], f["rows"]) == (want["successes"], want["failures"], want["rows"]), name
        assert images[name] == want["successes"]
    bomb = "decompression bomb: {0}x{0} = {1} pixels > limit 89478485"
    assert [(s, r, st, e.split(" (")[0]) for s, r, st, e in failures] == [
        ("datacomp", "00000000000000000000000000000003", "failed_to_download", "HTTP Error 404: File not found"),
        ("datacomp", "00000000000000000000000000000004", "failed_to_download", "hash mismatch"),
        ("gldv2", gldv2.image_id("dead"), "failed_to_download", "HTTP Error 404: File not found"),
        # LLaVA's broken files: rows of its shard table, each stored once (two rows use the truncated one)
        ("llava_665k", "ocr_vqa/images/1400319961.jpg", "failed_to_decode",
         "corrupt or truncated image: image file is truncated"),
        ("llava_665k", "vg/VG_100K_2/2400001.jpg", "failed_to_decode", bomb.format(20000, 400000000)),
        ("llava_665k", "vg/VG_100K_2/2400002.png", "failed_to_decode", bomb.format(12000, 144000000)),
        ("vora_recap", "recap-00000005", "failed_to_decode", "corrupt or truncated image: image file is truncated")]
    assert alt == expected["images"]["gldv2"]["alt_text"]  # Wikimedia category URLs → names, non-ASCII kept
    assert images["llava_665k"] == 5  # one stored image per distinct usable file

    # Recaption: one caption per image of the image sources; the recap parquet's own four are kept
    # (engine `provided`), the model captions the rest (its 8-token captions are all `truncated`).
    captioned = sum(images[s] for s in expected["images"])
    assert captioned == 4 + 3 + 5
    assert sum(r["images"] for r in results["recaption"]) == captioned
    assert engines == [("hf", captioned - 4, captioned - 4), ("provided", 4, 0)]

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
            assert (kind in ("caption", "vqa")) == (image is not None), sample_id
    pretrain = read_marker(catalog.run.mixture("pretrain"))["stats"]["by_source"]
    assert {k: v for k, v in pretrain.items() if not k.endswith("/caption")} == {
        f"{n}/text": w["written"] for n, w in expected["text"].items() if n != "llava_665k"}
    finetune = read_marker(catalog.run.mixture("finetune"))["stats"]["by_source"]
    llava_rows = expected["text"]["llava_665k"]
    assert finetune == {"dolly/text": expected["text"]["dolly"]["written"], "llava_665k/vqa": llava_rows["vqa"],
                        "llava_665k/text": llava_rows["written"] - llava_rows["vqa"],
                        "smoltalk/text": expected["text"]["smoltalk"]["written"]}
    # One sample per LLaVA row (its `id` repeats), the COCO image its first three rows share stored once.
    llava_used = {r[1]: r[4] for r in mixture if r[0] == "finetune" and r[3] == "llava_665k"}
    assert sorted(llava_used) == [f"llava_665k/{n:09d}" for n in range(10)]
    assert llava_used["llava_665k/000000000"] == llava_used["llava_665k/000000001"] == llava_used[
        "llava_665k/000000002"] is not None
    # `recap_or_alt`: the recap parquet's captions; for the model's truncated ones the alt text. Without
    # either: the DataComp photo whose `text` is null and the recap row that carries no caption.
    funnel = json.loads((catalog.run.mixture("pretrain") / "stats.json").read_text())["captions"]
    assert funnel == {"images": captioned, "too_small": 0, "no_caption": 2, "duplicates": 0, "used": captioned - 2}
    assert sum(v for k, v in pretrain.items() if k.endswith("/caption")) == captioned - 2
    caption_rows = {r[4]: r[5] for r in mixture if r[0] == "pretrain" and r[2] == "caption"}
    sources = {i: i.split("/")[0] for i in image_ids}
    (null_text,) = {i for i in no_alt if sources.get(i) in ("datacomp", "gldv2")}
    (uncaptioned,) = {i for i, r in recap_ids.items() if r == "recap-00000004"}
    assert set(caption_rows) == {i for i, s in sources.items() if s in expected["images"]} - {null_text, uncaptioned}
    # The released captions reach the pretrain mixture as the assistant turn, word for word.
    assert {recap_ids[i]: m[-1]["content"] for i, m in caption_rows.items() if i in recap_ids} == \
        expected["images"]["vora_recap"]["captions"]
