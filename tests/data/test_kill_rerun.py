"""SIGKILL the download stage mid-way, rerun: the same result as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.data.conftest import make_catalog, run_download
from vora_core.data.shards import ShardReader
from vora_core.manifest import open_manifest
from vora_core.workdir import marker_path

pytestmark = pytest.mark.slow

SOURCES = {"shapes": {"kind": "synthetic_shapes", "n": 30, "heldout": 0, "seed": 3}}
SETTINGS = {"rows_per_unit": 10, "number_sample_per_shard": 5}

RUNNER = """
import sys
from vora_core.catalog import load_catalog
from tests.data.conftest import run_download
run_download(load_catalog(sys.argv[1]))
"""


def snapshot(catalog):
    con = open_manifest(catalog.run)
    ids = sorted(r[0] for r in con.execute("SELECT sample_id FROM images").fetchall())
    shards = con.execute("SELECT shard, rows, successes FROM shards ORDER BY shard").fetchall()
    labels = sorted(con.execute("SELECT key, alt_text FROM images").fetchall())
    con.close()
    return ids, shards, labels


def test_sigkill_mid_stage_then_rerun_equals_uninterrupted(tmp_path):
    reference = make_catalog(tmp_path / "ref", SOURCES, **SETTINGS)
    run_download(reference)
    expected = snapshot(reference)
    assert len(expected[0]) == 30 and len(expected[1]) == 6

    crashed = make_catalog(tmp_path / "crash", SOURCES, **SETTINGS)
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(tmp_path / "crash" / "catalog.yaml")],
                            cwd=os.getcwd(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = marker_path(crashed.run.shards("shapes") / "unit-00000.json")
    deadline = time.monotonic() + 120
    while not first.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.exists(), "the first unit never finished"
    time.sleep(1.0)  # let the second unit's img2dataset get going
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    # What the manifest sees after the crash: only complete shards (tar + index + rows).
    ids, shards, _ = snapshot(crashed)
    assert 10 <= len(ids) < 30
    for shard, rows, _ok in shards:
        with ShardReader(crashed.run.shards("shapes") / f"{shard}.tar") as reader:
            assert len(reader) == rows

    results = run_download(crashed)
    assert [r["status"] for r in results] == ["skipped", "done", "done"]
    assert snapshot(crashed) == expected
    leftovers = [p.name for p in crashed.run.shards("shapes").iterdir() if p.name.startswith(".")]
    assert leftovers == []
