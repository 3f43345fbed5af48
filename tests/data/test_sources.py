"""Every source kind: what it prepares, what it rejects or filters, with counts that add up."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.conftest import jpeg, make_catalog, rgb, run_download
from vora_core.data.shards import ShardReader
from vora_core.errors import DataError
from vora_core.manifest import open_manifest
from vora_core.stages import download
from vora_core.workdir import run_unit_with_marker


def prepare(catalog):
    return [run_unit_with_marker(u, lambda u: download.run_unit(catalog, u)) for u in download.prepare_units(catalog)]


def test_url_list_missing_column_names_file_and_columns(tmp_path):
    (tmp_path / "urls.csv").write_text("link,caption\nhttp://x/a.jpg,a\n")
    catalog = make_catalog(tmp_path, {"web": {"kind": "url_list", "path": str(tmp_path / "urls.csv")}})
    with pytest.raises(DataError) as e:
        prepare(catalog)
    assert str(e.value) == (
        f"{tmp_path / 'urls.csv'}: no url column 'url'; columns found: link, caption "
        "(set `url_col` in the catalog source)"
    )


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_url_list_formats_and_columns(tmp_path, fmt):
    rows = [{"u": f"http://h/{i}.jpg", "c": f"cap {i}"} for i in range(5)] + [{"u": "http://h/0.jpg", "c": "dup"}]
    path = tmp_path / f"urls.{fmt}"
    if fmt == "csv":
        path.write_text("u,c\n" + "".join(f"{r['u']},{r['c']}\n" for r in rows))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    catalog = make_catalog(tmp_path, {"web": {"kind": "url_list", "path": str(path), "url_col": "u",
                                              "caption_col": "c"}}, rows_per_unit=2, number_sample_per_shard=2)
    [stats] = prepare(catalog)
    assert (stats["rows"], stats["partitions"], stats["rejected"], stats["input_rows"]) == (
        5, 3, {"duplicate url": 1}, 6)
    part = pq.read_table(catalog.run.sources("web") / "urls-00002.parquet").to_pylist()
    assert part == [{"row_id": "4", "url": "http://h/4.jpg", "caption": "cap 4"}]
    assert [u.id for u in download.plan(catalog)] == ["web/00000", "web/00001", "web/00002"]


def test_datacomp_filters_longer_edge_before_download_and_verifies_sha256(tmp_path):
    images = tmp_path / "img"
    images.mkdir()
    body = jpeg(rgb(60, 40))
    (images / "a.jpg").write_bytes(body)
    (images / "b.jpg").write_bytes(body)
    good_sha = hashlib.sha256(body).hexdigest()
    meta = [
        {"uid": "u1", "url": (images / "a.jpg").as_uri(), "text": "wide", "original_width": 600,
         "original_height": 100, "sha256": good_sha},
        {"uid": "u2", "url": (images / "b.jpg").as_uri(), "text": "bad sha", "original_width": 100,
         "original_height": 500, "sha256": "0" * 64},
        {"uid": "u3", "url": "http://h/small.jpg", "text": "small", "original_width": 448,
         "original_height": 300, "sha256": good_sha},
        {"uid": "u4", "url": None, "text": "no url", "original_width": 900, "original_height": 900,
         "sha256": good_sha},
    ]
    (tmp_path / "meta").mkdir()
    pq.write_table(pa.Table.from_pylist(meta), tmp_path / "meta" / "0000.parquet")
    catalog = make_catalog(tmp_path, {"dc": {"kind": "datacomp", "path": str(tmp_path / "meta" / "*.parquet"),
                                             "min_longer_edge": 448, "verify_sha256": True}})
    [stats] = prepare(catalog)
    assert stats["filtered"] == {"longer edge <= 448 px": 1}
    assert stats["rejected"] == {"null url": 1}
    assert stats["input_rows"] == 4
    [result] = run_download(catalog)
    assert (result["rows"], result["successes"], result["failures_by_reason"]) == (2, 1, {"hash_mismatch": 1})
    con = open_manifest(catalog.run)
    assert con.execute("SELECT row_id, sha256 FROM images").fetchall() == [("u1", good_sha)]
    con.close()
    # The failures report: the fixed reasons, their shares of the 3 rows attempted, the raw error as detail;
    # the row the source's own filter left out is listed but is no failure.
    report = download.failure_report(catalog)
    assert (report["rows"], report["failed"], report["share"]) == (3, 2, 0.6667)
    assert [(r["reason"], r["count"], r["share"]) for r in report["reasons"]] == [
        ("empty", 1, 0.3333), ("hash_mismatch", 1, 0.3333), ("filtered_size", 1, None)]
    assert [[(e["row_id"], e["error"]) for e in r["examples"]] for r in report["reasons"]] == [
        [("u4", "null url")], [("u2", "hash mismatch")], []]


def test_gldv2_clean_subset_and_category_alt_text(tmp_path):
    (tmp_path / "train.csv").write_text(
        "id,url,landmark_id\n"
        "aa,http://h/aa.jpg,1\nbb,http://h/bb.jpg,2\ncc,http://h/cc.jpg,2\ndd,,1\n"
    )
    (tmp_path / "train_clean.csv").write_text("landmark_id,images\n1,aa dd\n2,bb\n")
    (tmp_path / "cats.csv").write_text(
        "landmark_id,category\n"
        "1,http://commons.wikimedia.org/wiki/Category:Eiffel_Tower\n"
        "2,http://commons.wikimedia.org/wiki/Category:Caf%C3%A9_de_Flore\n"
    )
    catalog = make_catalog(tmp_path, {"gld": {
        "kind": "gldv2", "train_csv": str(tmp_path / "train.csv"), "clean_csv": str(tmp_path / "train_clean.csv"),
        "label_to_category_csv": str(tmp_path / "cats.csv")}})
    [stats] = prepare(catalog)
    assert stats["filtered"] == {"not in train_clean.csv": 1}
    assert stats["rejected"] == {"null url": 1}
    rows = pq.read_table(catalog.run.sources("gld") / "urls-00000.parquet").to_pylist()
    assert [(r["row_id"], r["caption"], r["landmark_id"]) for r in rows] == [
        ("aa", "Eiffel Tower", "1"), ("bb", "Café de Flore", "2")]


def test_parquet_images_written_straight_to_shards(tmp_path):
    body = jpeg(rgb(30, 20))
    conv = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "Noise."}]
    table = pa.table({
        "id": ["a", "b", "c", "d"],
        "image": [{"bytes": body, "path": "a.jpg"}, {"bytes": body, "path": "b.jpg"}, {"bytes": None, "path": None},
                  {"bytes": b"not an image", "path": "d.jpg"}],
        "conversations": [conv, conv, conv, conv],
    })
    pq.write_table(table, tmp_path / "part-0.parquet")
    catalog = make_catalog(tmp_path, {"pre": {"kind": "parquet_images", "path": str(tmp_path / "part-0.parquet")}})
    [result] = run_download(catalog)
    assert (result["rows"], result["successes"]) == (4, 2)
    assert result["failures_by_reason"] == {"empty": 1, "decode_error": 1}
    con = open_manifest(catalog.run)
    keys = dict(con.execute("SELECT row_id, key FROM images").fetchall())
    con.close()
    with ShardReader(catalog.run.shards("pre") / "00000.tar") as reader:
        assert reader.image(keys["a"]).size == (30, 20)
        assert json.loads(reader.meta(keys["b"])["conversations"]) == conv
