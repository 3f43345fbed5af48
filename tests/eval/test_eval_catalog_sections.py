"""The merge and evaluate catalog sections: both shipped catalogs validate, bad values are refused."""

from __future__ import annotations

import pytest

from vora_core.catalog import load_catalog, parse_catalog
from vora_core.errors import CatalogError
from vora_core.stages import evaluate


def test_shipped_catalogs_plan_their_benchmarks(tmp_path):
    demo = load_catalog("catalogs/demo.yaml")
    assert demo.merge.dtype == "float32" and demo.evaluate.heldout and demo.evaluate.max_new_tokens == 12
    demo = demo.model_copy(update={"workdir": str(tmp_path / "demo")})
    assert [u.id for u in evaluate.plan(demo)] == ["shapes-heldout-mc", "shapes-heldout-yesno", "shapes-heldout-short"]
    paper = load_catalog("catalogs/vora-7b.yaml")
    assert [b.format for b in paper.evaluate.benchmarks] == [
        "vqav2", "textvqa", "pope", "mme", "mmbench", "scienceqa", "seedbench", "ai2d"]
    paper = paper.model_copy(update={"workdir": str(tmp_path / "paper")})
    assert len(evaluate.plan(paper)) == 8  # no synthetic source: no held-out benchmark


def test_bad_evaluate_settings_name_the_key():
    base = {"name": "t", "workdir": "w", "sources": {"s": {"kind": "synthetic_shapes"}}}
    with pytest.raises(CatalogError, match=r"evaluate.benchmarks.0.format: Input should be 'pope', 'mme'"):
        parse_catalog({**base, "evaluate": {"benchmarks": [{"name": "x", "format": "coco", "path": "p"}]}})
    with pytest.raises(CatalogError, match=r"merge.dtype: Input should be 'float32', 'bfloat16' or 'float16'"):
        parse_catalog({**base, "merge": {"dtype": "int8"}})
    with pytest.raises(CatalogError, match=r"evaluate.batch_sise: unknown key"):
        parse_catalog({**base, "evaluate": {"batch_sise": 4}})
