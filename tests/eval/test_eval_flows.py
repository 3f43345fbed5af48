"""The merge and evaluate flows on the embedded Prefect server: merged model → benchmarks, reruns skip."""

from __future__ import annotations

import json

import pytest
import yaml

from vora_core.data.sources import connect, synthetic_rows

pytestmark = pytest.mark.slow


def test_merge_then_evaluate_flows(prefect_harness, tmp_path, tiny_eval):
    from prefect.artifacts import Artifact

    from flows.evaluate import evaluate_flow
    from flows.merge import merge_flow
    from vora_core.catalog import load_catalog

    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({
        "name": "evalflow", "workdir": str(tmp_path / "run"),
        "sources": {"shapes": {"kind": "synthetic_shapes", "n": 2, "heldout": 3, "min_side": 24, "max_side": 40}},
        "merge": {"source": str(tiny_eval["pretrain"])},
        "evaluate": {"model": "merged", "batch_size": 4, "max_new_tokens": 3},
    }))
    catalog = load_catalog(path)
    con = connect()
    synthetic_rows(catalog.sources["shapes"], catalog.run.sources("shapes"), con)  # the download stage's part
    con.close()

    [merged] = merge_flow(str(path))
    assert merged["status"] == "done" and merged["max_abs_logit_diff"] <= 1e-5
    results = evaluate_flow(str(path))
    assert sorted(r["unit"] for r in results) == ["shapes-heldout-mc", "shapes-heldout-short", "shapes-heldout-yesno"]
    assert {r["status"] for r in results} == {"done"}
    summary = json.loads((catalog.run.stage_dir("evaluate") / "summary.json").read_text())
    assert summary["model"] == str(catalog.run.stage_dir("merge"))
    # 3 held-out images: 2 mc + 2 yes/no + 4 short questions each
    assert {k: b["scored"] for k, b in summary["benchmarks"].items()} == {
        "shapes-heldout-mc": 6, "shapes-heldout-yesno": 6, "shapes-heldout-short": 12}

    assert [r["status"] for r in merge_flow(str(path))] == ["skipped"]
    assert {r["status"] for r in evaluate_flow(str(path))} == {"skipped"}
    for key in ("evalflow-merge", "evalflow-evaluate"):
        artifact = Artifact.get(key)
        assert artifact is not None and artifact.type == "table"
