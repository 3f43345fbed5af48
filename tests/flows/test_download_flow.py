"""The download flow on the embedded Prefect server: units, markers, cache, artifacts."""

import json
import os
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = pytest.mark.slow


def write_catalog(tmp_path: Path) -> Path:
    catalog = {
        "name": "flowtest",
        "workdir": str(tmp_path / "run"),
        "sources": {"shapes": {"kind": "synthetic_shapes", "n": 30, "heldout": 4}},
        "download": {
            "image_size": 64, "processes_count": 1, "thread_count": 4,
            "number_sample_per_shard": 10, "rows_per_unit": 10,
        },
    }
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    return path


def files_with_mtimes(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in root.rglob("*")
        if p.is_file() and ".prefect" not in p.parts and p.name != "manifest.duckdb"
    }


def test_download_flow_runs_units_and_a_rerun_redoes_nothing(prefect_harness, tmp_path):
    from prefect.settings import PREFECT_API_URL

    from flows.download import download_flow
    from vora_core.catalog import load_catalog
    from vora_core.manifest import open_manifest

    path = write_catalog(tmp_path)
    results = download_flow(str(path))
    assert sorted(r["unit"] for r in results) == ["shapes/00000", "shapes/00001", "shapes/00002"]
    assert {r["status"] for r in results} == {"done"}

    run = load_catalog(path).run
    con = open_manifest(run)
    images = con.execute("select count(*) from images").fetchone()[0]
    failures = con.execute("select count(*) from download_failures").fetchone()[0]
    con.close()
    assert (images, failures) == (30, 0)
    assert (run.root / "catalog.lock.yaml").is_file()

    before = files_with_mtimes(run.root)
    again = download_flow(str(path))
    assert {r["status"] for r in again} == {"skipped"}
    assert files_with_mtimes(run.root) == before  # nothing rewritten

    api = PREFECT_API_URL.value()
    arts = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"key": {"any_": ["flowtest-download"]}}}).json()
    assert arts and {a["type"] for a in arts} == {"table"}
    table = json.loads(arts[0]["data"])
    assert [(r["source"], r["images"], r["units_done"]) for r in table] == [("shapes", 30, 3)]
    assert os.path.isdir(run.shards("shapes"))
