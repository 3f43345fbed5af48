"""What an operator sees in the UI (asserted through a real Prefect server's API): run names, the
failures artifact, the failure-rate threshold, skipped units, the pipeline summary artifact."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

pytestmark = pytest.mark.slow


def url_catalog(tmp_path: Path, file: str = "fails.yaml", **download) -> Path:
    """11 file:// rows: 6 images, 3 missing files, 1 empty file, 1 HTML page (5 of 11 fail)."""
    folder = tmp_path / "files"
    folder.mkdir(exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 30)).save(buf, "PNG")
    rows = []
    for i in range(6):
        (folder / f"ok{i}.png").write_bytes(buf.getvalue())
        rows.append({"id": f"ok{i}", "url": (folder / f"ok{i}.png").as_uri(), "text": "red"})
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "page.jpg").write_bytes(b"<!DOCTYPE html><html><body>gone</body></html>")
    rows += [{"id": f"gone{i}", "url": (folder / f"gone{i}.jpg").as_uri(), "text": None} for i in range(3)]
    rows += [{"id": name, "url": (folder / f"{name}.jpg").as_uri(), "text": None} for name in ("zero", "page")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "urls.parquet")
    path = tmp_path / file
    path.write_text(yaml.safe_dump({
        "name": "fails", "workdir": str(tmp_path / "run"),
        "sources": {"web": {"kind": "url_list", "path": str(tmp_path / "urls.parquet"), "id_col": "id",
                            "caption_col": "text"}},
        "download": {"image_size": 32, "processes_count": 1, "thread_count": 2, "number_sample_per_shard": 10,
                     "rows_per_unit": 10, "retries": 0, "timeout": 2, **download},
    }))
    return path


def api_post(path: str, body: dict) -> list[dict]:
    from prefect.settings import PREFECT_API_URL

    r = httpx.post(f"{PREFECT_API_URL.value()}{path}", json=body, timeout=30)
    r.raise_for_status()
    return r.json()


def flow_run(run_id) -> dict:
    [fr] = api_post("/flow_runs/filter", {"flow_runs": {"id": {"any_": [str(run_id)]}}})
    return fr


def task_states(run_id) -> list[str]:
    trs = api_post("/task_runs/filter", {"flow_runs": {"id": {"any_": [str(run_id)]}}})
    return sorted(tr["state"]["name"] for tr in trs if not tr["name"].startswith("download-prepare"))


def artifact(key: str) -> dict:
    arts = api_post("/artifacts/filter", {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC"})
    assert arts, f"no artifact {key}"
    return arts[0]


def test_failures_are_visible_and_the_threshold_fails_the_stage(prefect_harness, tmp_path):
    from flows.download import download_flow
    from flows.pipeline import vora_pipeline

    path = url_catalog(tmp_path)
    state = download_flow(str(path), return_state=True)
    summary = "download: 5 of 11 rows failed (45.5%; not_found 3, decode_error 1, empty 1)"
    assert (state.type.value, state.name, state.message) == ("COMPLETED", "Completed with failures", summary)
    run = flow_run(state.state_details.flow_run_id)
    assert run["name"] == "fails-download"
    assert run["state"]["name"] == "Completed with failures"
    assert task_states(run["id"]) == ["Completed", "Completed"]

    md = artifact("fails-download-failures")
    assert md["type"] == "markdown"
    assert "5 of 11 rows failed (45.5%)." in md["data"]
    for line in ("| not_found | 3 | 27.3% |", "| decode_error | 1 | 9.1% |", "| empty | 1 | 9.1% |",
                 "## not_found: examples", "| web | gone0 | "):
        assert line in md["data"], line
    assert "empty file (zero bytes)" in md["data"]  # the raw error is the example's detail
    table = artifact("fails-download")
    assert table["description"].endswith(f"outputs: {tmp_path / 'run' / 'shards'}")

    # The same run against a stricter threshold: the stage fails naming the share and the threshold,
    # while its units (markers matching) show as skipped.
    strict = url_catalog(tmp_path, "strict.yaml", max_failure_rate=0.3)
    state = download_flow(str(strict), return_state=True)
    assert state.type.value == "FAILED"
    assert (f"{summary}, above download.max_failure_rate=0.3: see the download failures artifact"
            in state.message), state.message
    assert task_states(state.state_details.flow_run_id) == ["Skipped", "Skipped"]

    # A forced rerun says so in its name; the pipeline run ends with its summary artifact.
    state = download_flow(str(path), force=True, return_state=True)
    assert flow_run(state.state_details.flow_run_id)["name"] == "fails-download-forced"
    state = vora_pipeline(str(path), only=["download"], return_state=True)
    assert state.type.value == "COMPLETED"
    assert flow_run(state.state_details.flow_run_id)["name"] == "fails-pipeline"
    summary_md = artifact("fails-pipeline-summary")["data"]
    assert "# fails: pipeline summary" in summary_md
    assert "## download\n\nunits: 0 done, 2 skipped, 0 failed" in summary_md
    assert f"outputs: `{tmp_path / 'run' / 'shards'}`" in summary_md


def test_mix_and_recaption_fail_above_their_failure_rate(prefect_harness, tmp_path):
    """The same mechanism for the text sources' rejects (mix) and the images without a caption (recaption)."""
    from flows.mix import mix_flow
    from flows.recaption import recaption_flow
    from tests.caption.conftest import shape_image, write_shard
    from tests.mix.conftest import rejecting_text_catalog

    # mix: 5 of 8 text rows rejected is above the default 0.5; the stage fails before any mixture is built.
    state = mix_flow(str(rejecting_text_catalog(tmp_path)), return_state=True)
    summary = "mix: 5 of 8 rows failed (62.5%; malformed 3, unknown_role 2)"
    assert state.type.value == "FAILED"
    assert (f"{summary}, above mix.max_failure_rate=0.5: see the mix failures artifact or the text_rejects "
            "view; raise the threshold in the catalog to accept it") in state.message, state.message
    assert not (tmp_path / "run" / "mixture").exists()
    md = artifact("rejects-mix-failures")["data"]
    for line in ("5 of 8 rows failed (62.5%).", "| malformed | 3 | 37.5% |", "| unknown_role | 2 | 25.0% |",
                 "| sg | 2 | c | alien |", "| smol | 1 | 000000001 | tool |"):
        assert line in md, line
    # Within the threshold it completes with failures, the mixture built.
    state = mix_flow(str(rejecting_text_catalog(tmp_path, "lenient.yaml", max_failure_rate=0.7)), return_state=True)
    assert (state.type.value, state.name, state.message) == ("COMPLETED", "Completed with failures", summary)
    assert (tmp_path / "run" / "mixture" / "pretrain" / "stats.json").is_file()

    # recaption: 1 of 4 images undecodable is above the default 0.05; quality flags are no failures.
    run = tmp_path / "caprun"
    write_shard(run, "shapes", 0, {"000000000": shape_image(0), "000000001": b"<html>404 not found</html>",
                                   "000000002": shape_image(2), "000000003": shape_image(3)})
    path = tmp_path / "cap.yaml"
    path.write_text(yaml.safe_dump({
        "name": "cap", "workdir": str(run), "sources": {"shapes": {"kind": "synthetic_shapes", "n": 4, "heldout": 0}},
        "recaption": {"model": "tiny", "batch_size": 4, "max_new_tokens": 4, "min_pixels": 784,
                      "max_pixels": 56 * 56, "concurrency_limit": None, "cpu_threads": 1}}))
    state = recaption_flow(str(path), return_state=True)
    assert state.type.value == "FAILED"
    assert ("recaption: 1 of 4 rows failed (25.0%; undecodable_image 1), above recaption.max_failure_rate=0.05: "
            "see the recaption failures artifact or the captions view; raise the threshold in the catalog to "
            "accept it") in state.message, state.message
    md = artifact("cap-recaption-failures")["data"]
    for line in ("1 of 4 rows failed (25.0%).", "| undecodable_image | 1 | 25.0% |",
                 "| shapes | 00000 | 000000001 | shapes/000000001 | not an image (HTML/XML body) |"):
        assert line in md, line
