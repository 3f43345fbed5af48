"""`vora status` and `vora sql` on a real run directory (download → recaption → mix, once per module),
a manifest that still opens after the run directory moves, and a failing stage that shows one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml

from vora_core.stages import NAMES as STAGES

pytestmark = pytest.mark.slow
VORA = str(Path(sys.executable).with_name("vora"))
DEMO_TEXT = Path(__file__).resolve().parents[2] / "catalogs" / "demo_text"
IMAGES = 12


def vora(*args: str, cwd: Path, stdin: str | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME")}
    env |= {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "COLUMNS": "80"}
    return subprocess.run([VORA, *args], cwd=cwd, capture_output=True, text=True, env=env, input=stdin,
                          timeout=timeout)


def catalog(tmp: Path, bad_text: bool = False) -> dict:
    text = {"chat_sharegpt": {"weight": 0.2}, "orca": {"weight": 0.2}}
    doc = {
        "name": "small", "workdir": "run",
        "sources": {"shapes": {"kind": "synthetic_shapes", "n": IMAGES, "heldout": 0}},
        "download": {"processes_count": 1, "thread_count": 2, "number_sample_per_shard": 100, "rows_per_unit": 100},
        "recaption": {"engine": "hf", "model": "tiny", "batch_size": 16, "max_new_tokens": 6, "max_pixels": 12544,
                      "cpu_threads": 1, "concurrency_limit": None},
        "text_sources": {
            "chat_sharegpt": {"format": "sharegpt", "path": "demo_text/sharegpt.jsonl"},
            "orca": {"format": "prompt_response", "path": "demo_text/orca.jsonl", "system_col": "system_prompt"},
        },
        "mix": {"pretrain": {"captions": {"policy": "alt"}, "text": text}},
    }
    if bad_text:
        doc["text_sources"]["broken"] = {"format": "sharegpt", "path": "broken.jsonl"}
        text["broken"] = {"weight": 0.2}
    return doc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("status")
    shutil.copytree(DEMO_TEXT, tmp / "demo_text")
    (tmp / "c.yaml").write_text(yaml.safe_dump(catalog(tmp)))
    out = vora("run", "c.yaml", "--until", "mix", cwd=tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Loading weights" not in out.stderr and "Writing model shards" not in out.stderr  # no tqdm bars
    # not a terminal: progress is plain log lines with n/total, no live display
    assert "download: 1/1 units, done in 0:0" in out.stderr
    assert f"download: {IMAGES}/{IMAGES} rows, done in" in out.stderr
    assert "download units" not in out.stderr
    return tmp


def counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return {v: con.execute(f"SELECT count(*) FROM {v}").fetchone()[0]
            for v in ("images", "shard_rows", "captions", "text", "text_rejects", "mixture")}


def test_status_fits_80_columns(run_dir):
    out = vora("status", "c.yaml", cwd=run_dir)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line for line in lines if len(line) > 80] == []
    mix = lines[lines.index("mix"):]
    # every mixture unit is named whole on one line, never cut or wrapped
    for unit in ("text:chat_sharegpt", "text:orca", "mixture:pretrain"):
        assert any(line.strip().startswith(unit) for line in mix), unit
    assert str(run_dir) not in out.stdout  # paths relative to the run directory
    assert lines[0] == "small — run directory run"
    for stage in STAGES:
        assert stage in lines or f"{stage}: nothing planned yet" in lines
    download = lines[lines.index("download") + 1:]
    assert download[0] == "  shapes"
    assert any(line.split() == ["images:", str(IMAGES)] for line in download[:20])


def test_status_json(run_dir):
    out = vora("status", "c.yaml", "--json", cwd=run_dir)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["catalog"] == "small"
    assert doc["workdir"] == str((run_dir / "run").resolve())
    assert list(doc["stages"]) == list(STAGES)
    [download] = doc["stages"]["download"]
    assert (download["source"], download["images"], download["failures"], download["units_pending"]) == (
        "shapes", IMAGES, 0, 0)
    assert {r["unit"]: r["done"] for r in doc["stages"]["mix"]} == {
        "text:chat_sharegpt": True, "text:orca": True, "mixture:pretrain": True}


def test_sql_query_and_prompt(run_dir):
    out = vora("sql", "c.yaml", "SELECT count(*) AS n_images FROM images", cwd=run_dir)
    assert out.returncode == 0, out.stderr
    assert out.stdout == (
        "┌──────────┐\n│ n_images │\n│  int64   │\n├──────────┤\n│       12 │\n└──────────┘\n\n")
    out = vora("sql", "c.yaml", "SELECT * FROM mixture", cwd=run_dir)  # wide rows: fitted to 80 columns
    assert out.returncode == 0, out.stderr
    assert [line for line in out.stdout.splitlines() if len(line) > 80] == []
    assert "sample_id" in out.stdout
    out = vora("sql", "c.yaml", "SELECT nope FROM images", cwd=run_dir)
    assert out.returncode == 2
    assert out.stderr.startswith('error: Binder Error: Referenced column "nope" not found')
    assert len(out.stderr.splitlines()) == 1
    out = vora("sql", "c.yaml", cwd=run_dir, stdin="SELECT 40 +\n2 AS answer;\nSELECT nope;\n.quit\nSELECT 1;\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout == (  # the error is shown and the prompt goes on; nothing runs after .quit
        "┌────────┐\n│ answer │\n│ int32  │\n├────────┤\n│     42 │\n└────────┘\n\n"
        'error: Binder Error: Referenced column "nope" was not found because the FROM clause is missing\n')


def test_moved_run_directory_still_opens_and_manifest_sql_runs_anywhere(run_dir, tmp_path, monkeypatch):
    from vora_core.manifest import open_manifest
    from vora_core.workdir import RunDir

    con = open_manifest(RunDir(run_dir / "run"))
    before = counts(con)
    con.close()
    assert before["images"] == IMAGES and before["mixture"] > IMAGES and before["text"] > 0
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(run_dir / "run", moved, copy_function=shutil.copy)  # as `cp -r`: every mtime new
    (run_dir / "run").rename(run_dir / "run-away")  # the original is gone while the copy is read
    try:
        # the stored views, not rebuilt (read-only), from another working directory
        monkeypatch.chdir(tmp_path)
        con = open_manifest(RunDir(moved), read_only=True)
        assert counts(con) == before
        con.close()
        # manifest.sql: plain SQL that a fresh in-memory DuckDB runs from the run directory
        sql = (moved / "manifest.sql").read_text()
        assert str(run_dir) not in sql and str(moved) not in sql  # relative paths only
        script = ("import duckdb, json; con = duckdb.connect(); con.execute(open('manifest.sql').read()); "
                  "print(json.dumps({v: con.execute(f'SELECT count(*) FROM {v}').fetchone()[0] for v in "
                  f"{list(before)!r}}}))")
        out = subprocess.run([sys.executable, "-c", script], cwd=moved, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == before
        # the same catalog run from the new place redoes nothing (fingerprints name files under the run,
        # by content); the catalog's own input files, outside the run, keep their mtimes (copy2, `cp -a`)
        shutil.copytree(run_dir / "demo_text", moved.parent / "demo_text")
        (moved.parent / "c.yaml").write_text((run_dir / "c.yaml").read_text())
        out = vora("status", "c.yaml", "--json", cwd=moved.parent)
        assert out.returncode == 0, out.stderr
        stages = json.loads(out.stdout)["stages"]
        assert {r["unit"]: r["done"] for r in stages["mix"]} == {
            "text:chat_sharegpt": True, "text:orca": True, "mixture:pretrain": True}
        assert stages["download"][0]["units_pending"] == 0
    finally:
        (run_dir / "run-away").rename(run_dir / "run")


def test_failing_stage_is_one_line_and_the_traceback_goes_to_the_log(run_dir):
    """Issue 13: a text file that cannot be read — the terminal shows no traceback; the log file has it."""
    (run_dir / "broken.jsonl").write_bytes(bytes(range(256)) * 8)
    (run_dir / "bad.yaml").write_text(yaml.safe_dump(catalog(run_dir, bad_text=True)))
    out = vora("stage", "mix", "bad.yaml", cwd=run_dir)
    assert out.returncode == 2
    assert "Traceback" not in out.stdout + out.stderr
    log = (run_dir / "run" / "logs" / "vora.log").resolve()
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: mix: 1 of 1 units failed — mixture:pretrain: DataError: text source 'broken' has no valid rows "
        f"(see the text_rejects view) (full log: {log})"]
    assert "Traceback (most recent call last)" in log.read_text()
    assert "DataError: text source 'broken' has no valid rows" in log.read_text()
