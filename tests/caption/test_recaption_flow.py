"""The recaption flow on the embedded Prefect server, after a real download: a failing shard is
reported while the other finishes, a rerun redoes only it, artifacts and the manifest view."""

from pathlib import Path

import pytest
import yaml

from vora_core.errors import StageError

pytestmark = pytest.mark.slow


def write_catalog(tmp_path: Path) -> Path:
    catalog = {
        "name": "capflow",
        "workdir": str(tmp_path / "run"),
        "sources": {"shapes": {"kind": "synthetic_shapes", "n": 8, "heldout": 0, "max_side": 64}},
        "download": {"image_size": 64, "processes_count": 1, "thread_count": 4,
                     "number_sample_per_shard": 4, "rows_per_unit": 8},
        "recaption": {"model": "tiny", "batch_size": 4, "max_new_tokens": 6, "max_pixels": 56 * 56,
                      "unit_retries": 0, "concurrency_limit": "capflow-gpu", "cpu_threads": 1},
    }
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    return path


def test_recaption_flow(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.download import download_flow
    from flows.recaption import recaption_flow
    from vora_core.catalog import load_catalog
    from vora_core.data.shards import index_path, write_index
    from vora_core.manifest import open_manifest

    path = write_catalog(tmp_path)
    download_flow(str(path))
    run = load_catalog(path).run
    tar = run.shards("shapes") / "00001.tar"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="capflow-gpu", limit=1))

    index_path(tar).rename(tar.with_name("moved-away"))  # shard 00001 cannot be read
    with pytest.raises(StageError) as e:
        recaption_flow(str(path))
    assert str(e.value).startswith("recaption: 1 of 2 units failed — shapes/00001: StageError: recaption "
                                   "shapes/00001: ")
    assert str(e.value).endswith("00001.idx.parquet is missing; rerun the download stage")
    assert (run.root / "captions" / "shapes" / "00000.parquet.done.json").is_file()  # the other finished
    assert not (run.root / "captions" / "shapes" / "00001.parquet").exists()

    write_index(tar)
    results = recaption_flow(str(path))
    assert sorted((r["unit"], r["status"]) for r in results) == [("shapes/00000", "skipped"),
                                                                 ("shapes/00001", "done")]
    con = open_manifest(run)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT sample_id), count(caption) FROM captions").fetchone() \
            == (8, 8, 8)
        assert con.execute("SELECT count(*) FROM images JOIN captions USING (sample_id)").fetchone() == (8,)
    finally:
        con.close()

    with get_client(sync_client=True) as client:
        table = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["capflow-recaption"])))
        progress = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["capflow-recaption-images"])))
        limit = client.read_global_concurrency_limit_by_name("capflow-gpu")
    assert table and table[0].type == "table"
    assert '"images": 8' in table[0].data and '"captions": 8' in table[0].data
    # One progress artifact per flow run: the first ended at 50% (one shard of two), the second at 100%.
    assert [(a.type, a.data) for a in sorted(progress, key=lambda a: a.created)] == [("progress", 50.0),
                                                                                    ("progress", 100.0)]
    assert limit.active_slots == 0  # every slot was released
    assert [r["status"] for r in recaption_flow(str(path))] == ["skipped", "skipped"]
