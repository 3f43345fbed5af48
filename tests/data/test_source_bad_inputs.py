"""Bad url-list / DataComp inputs: one clear error naming the file and the fix, or counted rejects."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.conftest import jpeg, make_catalog, png, rgb, run_download
from vora_core.errors import DataError
from vora_core.manifest import open_manifest
from vora_core.stages import download
from vora_core.workdir import run_unit_with_marker


def prepare(catalog):
    return [run_unit_with_marker(u, lambda u: download.run_unit(catalog, u)) for u in download.prepare_units(catalog)]


def test_url_list_jsonl_broken_line_is_one_counted_reject(tmp_path):
    lines = [json.dumps({"url": "http://h/0.jpg", "caption": "zero"}), '{"url": "http://h/1.jpg", "capt',
             "", json.dumps({"url": "http://h/2.jpg", "caption": None}), json.dumps(["not", "an", "object"]),
             json.dumps({"url": "http://h/3.jpg", "caption": "three", "extra": {"nested": 1}})]
    (tmp_path / "urls.jsonl").write_text("\n".join(lines) + "\n")
    catalog = make_catalog(tmp_path, {"web": {"kind": "url_list", "path": str(tmp_path / "urls.jsonl")}})
    [stats] = prepare(catalog)
    assert (stats["rows"], stats["rejected"], stats["input_rows"]) == (3, {"malformed json line": 2}, 5)
    rows = pq.read_table(catalog.run.sources("web") / "urls-00000.parquet").to_pylist()
    # row ids are the line's position among the non-blank lines: fixing the line later keeps them
    assert rows == [{"row_id": "0", "url": "http://h/0.jpg", "caption": "zero"},
                    {"row_id": "2", "url": "http://h/2.jpg", "caption": None},
                    {"row_id": "4", "url": "http://h/3.jpg", "caption": "three"}]
    rejects = pq.read_table(catalog.run.sources("web") / "rejects.parquet").to_pylist()
    assert rejects == [{"row_id": "urls.jsonl:2", "url": None, "reason": "malformed json line"},
                       {"row_id": "urls.jsonl:5", "url": None, "reason": "malformed json line"}]


def test_url_list_jsonl_with_bom_is_read(tmp_path):
    body = "".join(json.dumps({"url": f"http://h/{i}.jpg", "caption": f"c{i}"}) + "\n" for i in range(3))
    (tmp_path / "urls.jsonl").write_bytes(b"\xef\xbb\xbf" + body.encode())
    catalog = make_catalog(tmp_path, {"web": {"kind": "url_list", "path": str(tmp_path / "urls.jsonl")}})
    [stats] = prepare(catalog)
    assert (stats["rows"], stats["rejected"]) == (3, {})


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_empty_url_list_is_a_clear_error(tmp_path, suffix):
    (tmp_path / f"urls.{suffix}").write_bytes(b"")
    catalog = make_catalog(tmp_path, {"web": {"kind": "url_list", "path": str(tmp_path / f"urls.{suffix}")}})
    with pytest.raises(DataError) as e:
        prepare(catalog)
    assert str(e.value) == f"url_list source: {tmp_path / f'urls.{suffix}'} is empty (0 bytes); fill it or remove it"


def test_datacomp_without_uid_names_file_column_and_columns(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"key": "0", "url": "http://h/a.jpg", "text": "a", "original_width": 500,
                                          "original_height": 400}]), tmp_path / "meta.parquet")
    catalog = make_catalog(tmp_path, {"dc": {"kind": "datacomp", "path": str(tmp_path / "meta.parquet")}})
    with pytest.raises(DataError) as e:
        prepare(catalog)
    assert str(e.value) == (
        f"{tmp_path / 'meta.parquet'}: no id column 'uid'; columns found: key, url, text, original_width, "
        "original_height (a datacomp source reads DataComp's metadata columns uid, url, text, original_width, "
        "original_height)")
    assert "id_col" not in str(e.value)


@pytest.mark.slow
def test_paths_with_a_quote_work_in_every_source_kind(tmp_path):
    """Inputs and the run directory under `o'brien/`: every path that reaches DuckDB SQL is quoted."""
    root = tmp_path / "o'brien"
    images = root / "img's"
    images.mkdir(parents=True)
    for i in range(2):
        (images / f"{i}.jpg").write_bytes(jpeg(rgb(60, 40, seed=i)))
    urls = [(images / f"{i}.jpg").as_uri() for i in range(2)]
    (root / "urls.csv").write_text("url,caption\n" + "".join(f"{u},c\n" for u in urls))
    (root / "urls.jsonl").write_text("".join(json.dumps({"url": u}) + "\n" for u in urls))
    pq.write_table(pa.Table.from_pylist([
        {"uid": f"u{i}", "url": u, "text": "t", "original_width": 600, "original_height": 400}
        for i, u in enumerate(urls)]), root / "meta.parquet")
    (root / "train.csv").write_text("id,url,landmark_id\n" + "".join(f"g{i},{u},7\n" for i, u in enumerate(urls)))
    pq.write_table(pa.Table.from_pylist([{"id": "p0", "image": {"bytes": png(rgb(30, 20)), "path": None}}]),
                   root / "imgs.parquet")
    sources = {
        "csv": {"kind": "url_list", "path": str(root / "urls.csv")},
        "jsonl": {"kind": "url_list", "path": str(root / "urls.jsonl"), "caption_col": None},
        "dc": {"kind": "datacomp", "path": str(root / "meta.parquet"), "min_longer_edge": 0},
        "gld": {"kind": "gldv2", "train_csv": str(root / "train.csv")},
        "pq": {"kind": "parquet_images", "path": str(root / "imgs.parquet"), "conversations_col": None},
    }
    catalog = make_catalog(root, sources)
    results = run_download(catalog)
    assert sum(r["successes"] for r in results) == 9
    con = open_manifest(catalog.run)
    counts = dict(con.execute("SELECT source, count(*) FROM images GROUP BY source").fetchall())
    con.close()
    assert counts == {"csv": 2, "jsonl": 2, "dc": 2, "gld": 2, "pq": 1}


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from vora_core.data.shards import ShardWriter
from vora_core.workdir import atomic_path
run = Path(sys.argv[1])
writer = ShardWriter(run / "shards" / "shapes" / "00000.tar")
writer.write("000000000", {"png": b"x", "json": {"key": "000000000"}})
with atomic_path(run / "sources" / "shapes" / "prepared.json") as tmp:
    tmp.write_text("{")
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_rerun_after_sigkill_leaves_no_temporaries(tmp_path):
    catalog = make_catalog(tmp_path, {"shapes": {"kind": "synthetic_shapes", "n": 4, "heldout": 0}})
    run = catalog.run.ensure().root
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(run)], cwd=os.getcwd())
    assert killed.returncode == -signal.SIGKILL
    left = sorted(p.relative_to(run).as_posix().split(".tmp-")[0] for p in run.rglob("*.tmp-*"))
    assert left == ["shards/shapes/.00000.tar", "sources/shapes/.prepared.json"]
    # a temporary whose process still runs (another worker's) is left alone
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    busy = run / "shards" / "shapes" / f".00000.parquet.tmp-{alive.pid}-0a1b2c3d"
    busy.write_bytes(b"")
    try:
        run_download(catalog)
        assert [p.relative_to(run).as_posix() for p in run.rglob("*.tmp-*")] == [busy.relative_to(run).as_posix()]
    finally:
        alive.kill()
        alive.wait()


@pytest.mark.slow
def test_cli_download_bad_sources_exit_2_with_one_error_line(tmp_path):
    from pathlib import Path

    import yaml

    pq.write_table(pa.Table.from_pylist([{"key": "0", "url": "http://h/a.jpg", "text": "a", "original_width": 500,
                                          "original_height": 400}]), tmp_path / "meta.parquet")
    (tmp_path / "urls.jsonl").write_bytes(b"")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"name": "c", "workdir": "r", "sources": {
        "dc": {"kind": "datacomp", "path": "meta.parquet"}, "web": {"kind": "url_list", "path": "urls.jsonl"}}}))
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}  # a loaded machine starts it slowly
    out = subprocess.run([str(Path(sys.executable).with_name("vora")), "stage", "download", "c.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: download-prepare: 2 of 2 units failed — dc: DataError: meta.parquet: no id column 'uid'; columns "
        "found: key, url, text, original_width, original_height (a datacomp source reads DataComp's metadata "
        "columns uid, url, text, original_width, original_height); web: DataError: url_list source: urls.jsonl "
        f"is empty (0 bytes); fill it or remove it (full log: {(tmp_path / 'r' / 'logs' / 'vora.log').resolve()})"]


def test_url_list_jsonl_without_one_object_line_is_a_clear_error(tmp_path):
    (tmp_path / "urls.jsonl").write_text("http://h/0.jpg\nhttp://h/1.jpg\n")  # a plain url list named .jsonl
    catalog = make_catalog(tmp_path, {"web": {"kind": "url_list", "path": str(tmp_path / "urls.jsonl")}})
    with pytest.raises(DataError) as e:
        prepare(catalog)
    assert str(e.value) == (f"{tmp_path / 'urls.jsonl'}: no line is a JSON object (2 malformed lines); is the file "
                            "jsonl? set `format` in the catalog source")
