"""The recaption stage over real shards: outputs, bad input, fingerprints, manifest view, status."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from vora_core.caption.server import ChatServer
from vora_core.errors import StageError
from vora_core.manifest import open_manifest
from vora_core.stages import recaption, run_stage
from vora_core.workdir import marker_path, read_marker

COLUMNS = ["sample_id", "key", "caption", "prompt", "model", "engine", "n_tokens", "seconds", "finish_reason",
           "flags", "error"]


def rows(root: Path, shard: str = "00000", source: str = "shapes") -> list[dict]:
    return pq.read_table(root / "captions" / source / f"{shard}.parquet").to_pylist()


@pytest.mark.slow
def test_hf_stage_on_the_tiny_captioner(tmp_path, shards, catalog):
    n = shards(tmp_path, n_shards=2, per_shard=4)
    cat = catalog(tmp_path, "tiny")
    assert [u.id for u in recaption.plan(cat)] == ["shapes/00000", "shapes/00001"]
    results = run_stage("recaption", cat)
    assert [(r["unit"], r["status"], r["images"]) for r in results] == [
        ("shapes/00000", "done", 4), ("shapes/00001", "done", 4)]
    assert (tmp_path / "models" / "captioner" / "config.json").is_file()  # `model: tiny` built it

    table = pq.read_table(tmp_path / "captions" / "shapes" / "00000.parquet")
    assert table.schema.names == COLUMNS
    got = table.to_pylist()
    assert [(r["sample_id"], r["key"]) for r in got] == [(f"shapes/00000000{i}", f"00000000{i}") for i in range(4)]
    assert all(r["prompt"] in cat.recaption.prompts and r["model"] == "tiny" and r["engine"] == "hf" for r in got)
    assert all(r["n_tokens"] == 8 and r["finish_reason"] == "length" and "truncated" in r["flags"] for r in got)
    assert all(r["caption"] and r["error"] is None for r in got)
    marker = read_marker(tmp_path / "captions" / "shapes" / "00000.parquet")
    assert marker["stats"]["images"] == 4 and marker["stats"]["tokens"] == 32
    assert marker["stats"]["flags"]["truncated"] == 4

    con = open_manifest(cat.run)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT sample_id) FROM captions").fetchone() == (n, n)
        assert con.execute("SELECT count(*) FROM images JOIN captions USING (sample_id)").fetchone() == (n,)
        assert con.execute("SELECT DISTINCT source FROM captions").fetchall() == [("shapes",)]
    finally:
        con.close()
    [row] = recaption.summary(cat)
    assert {k: row[k] for k in ("source", "shards_done", "shards_pending", "images", "captions")} == {
        "source": "shapes", "shards_done": 2, "shards_pending": 0, "images": 8, "captions": 8}
    assert row["flags"]["truncated"] == 8 and row["images_per_s"] > 0 and row["tokens_per_s"] > 0
    assert "truncated 8/8 (100.0%)" in row["quality"] and row["quality"].startswith("WARNING: ")
    assert recaption.progress(cat) == (8, 8)

    again = run_stage("recaption", cat)  # a rerun redoes nothing
    assert [r["status"] for r in again] == ["skipped", "skipped"]


def test_bad_input_is_flagged_not_dropped(tmp_path, shard, catalog, captioner_dir, image):
    shard(tmp_path, "shapes", 0, {"000000000": image(0), "000000001": b"<html>404 not found</html>",
                                  "000000002": image(2)[: len(image(2)) * 2 // 3], "000000003": image(3)})
    shard(tmp_path, "shapes", 1, {})  # every download of this shard failed: an empty shard
    cat = catalog(tmp_path, str(captioner_dir))
    results = run_stage("recaption", cat)
    assert [(r["unit"], r["images"], r["captions"]) for r in results] == [("shapes/00000", 4, 2),
                                                                         ("shapes/00001", 0, 0)]
    assert results[0]["flags"]["undecodable_image"] == 2
    got = {r["key"]: r for r in rows(tmp_path)}
    assert got["000000001"]["flags"] == ["undecodable_image"]
    assert got["000000001"]["error"] == "not an image (HTML/XML body)"
    assert got["000000001"]["caption"] is None and got["000000001"]["finish_reason"] == "error"
    assert got["000000002"]["flags"] == ["undecodable_image"]
    assert got["000000002"]["error"].startswith("corrupt or truncated image")
    assert got["000000000"]["caption"] and got["000000003"]["caption"]
    empty = pq.read_table(tmp_path / "captions" / "shapes" / "00001.parquet")
    assert empty.num_rows == 0 and empty.schema.names == COLUMNS
    assert read_marker(tmp_path / "captions" / "shapes" / "00001.parquet")["stats"]["images"] == 0
    # The failures report: an image without a caption is a failure, with its raw error as the detail.
    report = recaption.failure_report(cat)
    assert {k: report[k] for k in ("stage", "rows", "failed", "share", "view")} == {
        "stage": "recaption", "rows": 4, "failed": 2, "share": 0.5, "view": "captions"}
    [undecodable] = report["reasons"]
    assert (undecodable["reason"], undecodable["count"], undecodable["share"]) == ("undecodable_image", 2, 0.5)
    assert [(e["shard"], e["key"], e["sample_id"]) for e in undecodable["examples"]] == [
        ("00000", "000000001", "shapes/000000001"), ("00000", "000000002", "shapes/000000002")]
    assert undecodable["examples"][0]["error"] == "not an image (HTML/XML body)"


def test_invalid_utf8_and_rejected_requests_from_a_server(tmp_path, shards, catalog, image):
    shards(tmp_path, n_shards=1, per_shard=3)
    rejected = image(1)

    def backend(body, data, prompt):
        # The JSON body carries a lone surrogate (\udcff) and control characters, as a broken server might.
        return {"text": "a red\x00 circle\x1b \udcff", "n_tokens": 5, "finish_reason": "stop"}

    def fault(body):
        from vora_core.caption.server import parse_chat

        return 400 if parse_chat(body)[0] == rejected else None

    with ChatServer(backend, fault=fault) as srv:
        cat = catalog(tmp_path, "m", engine="openai", openai={"base_urls": [srv.url], "backoff_s": 0.01})
        [result] = run_stage("recaption", cat)
    got = {r["key"]: r for r in rows(tmp_path)}
    assert got["000000000"]["caption"] == "a red circle" and got["000000000"]["flags"] == ["invalid_text"]
    assert got["000000001"]["flags"] == ["request_rejected"] and got["000000001"]["caption"] is None
    assert got["000000001"]["error"] == 'HTTP 400: {"error": {"message": "injected HTTP 400"}}'
    assert result["flags"] == {"invalid_text": 2, "request_rejected": 1} and result["captions"] == 2
    # A rejected request is a failure; invalid_text (2 of 3) is a quality flag, not a failure.
    report = recaption.failure_report(cat)
    assert (report["rows"], report["failed"], report["share"]) == (3, 1, 0.3333)
    assert report["reasons"] == [{"reason": "request_rejected", "count": 1, "share": 0.3333, "examples": [
        {"source": "shapes", "shard": "00000", "key": "000000001", "sample_id": "shapes/000000001",
         "error": 'HTTP 400: {"error": {"message": "injected HTTP 400"}}'}]}]


def test_fingerprint_follows_captions_not_throughput(tmp_path, shards, catalog):
    shards(tmp_path, n_shards=1, per_shard=2)
    base = recaption.plan(catalog(tmp_path, "m"))[0].fingerprint
    same = [catalog(tmp_path, "m", batch_size=32), catalog(tmp_path, "m", parallel_units=4),
            catalog(tmp_path, "m", concurrency_limit="gpu"), catalog(tmp_path, "m", openai={"concurrency": 3})]
    assert {recaption.plan(c)[0].fingerprint for c in same} == {base}
    changed = [catalog(tmp_path, "m", prompts=["Describe."]), catalog(tmp_path, "m", max_new_tokens=9),
               catalog(tmp_path, "m", seed=1), catalog(tmp_path, "other"), catalog(tmp_path, "m", engine="openai"),
               catalog(tmp_path, "m", quality={"repetition_ratio": 0.9})]
    fps = [recaption.plan(c)[0].fingerprint for c in changed]
    assert base not in fps and len(set(fps)) == len(fps)
    # New shard content (a re-download) changes the fingerprint too.
    shards(tmp_path, n_shards=1, per_shard=3)
    assert recaption.plan(catalog(tmp_path, "m"))[0].fingerprint != base


def test_missing_tar_index_is_a_clear_error(tmp_path, shards, catalog):
    shards(tmp_path, n_shards=1, per_shard=1)
    (tmp_path / "shards" / "shapes" / "00000.idx.parquet").unlink()
    with pytest.raises(StageError, match=r"recaption shapes/00000: .*00000.idx.parquet is missing; rerun the "
                                         r"download stage"):
        run_stage("recaption", catalog(tmp_path, "m"))


@pytest.mark.slow
def test_sigkill_mid_stage_then_rerun_redoes_only_unfinished_shards(tmp_path, shards, catalog, captioner_dir):
    n = shards(tmp_path, n_shards=3, per_shard=4)
    cat = catalog(tmp_path, str(captioner_dir), batch_size=2, max_new_tokens=8)
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(cat.model_dump(mode="json")))
    outputs = [tmp_path / "captions" / "shapes" / f"{s:05d}.parquet" for s in range(3)]
    code = ("import sys; from vora_core.catalog import load_catalog; from vora_core.stages import run_stage;"
            "run_stage('recaption', load_catalog(sys.argv[1]))")
    child = subprocess.Popen([sys.executable, "-c", code, str(path)], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not marker_path(outputs[0]).exists():
            assert child.poll() is None and time.monotonic() < deadline, "the stage ended before its first marker"
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    done_before = [o for o in outputs if marker_path(o).exists()]
    assert 1 <= len(done_before) < 3, "killed too late to test anything"
    mtimes = {o: o.stat().st_mtime_ns for o in done_before}

    results = run_stage("recaption", cat)
    statuses = [r["status"] for r in results]
    assert statuses == ["skipped"] * len(done_before) + ["done"] * (3 - len(done_before))
    assert {o: o.stat().st_mtime_ns for o in done_before} == mtimes  # finished shards untouched
    sample_ids = [r["sample_id"] for o in outputs for r in pq.read_table(o).to_pylist()]
    assert len(sample_ids) == len(set(sample_ids)) == n  # every image once, no duplicates
    assert not list((tmp_path / "captions").rglob(".*tmp-*"))  # the killed attempt's temporaries are gone
    assert json.loads(marker_path(outputs[-1]).read_text())["stats"]["images"] == 4


def test_flag_warning_names_each_flag_above_the_share():
    assert recaption.flag_warning({"invalid_text": 599, "truncated": 596, "empty": 12}, 600, 0.2) == (
        "WARNING: invalid_text 599/600 (99.8%), truncated 596/600 (99.3%) above recaption.max_flag_share=20%")
    assert recaption.flag_warning({"empty": 120}, 600, 0.2) is None  # exactly at the share: no warning
    assert recaption.flag_warning({}, 0, 0.2) is None
