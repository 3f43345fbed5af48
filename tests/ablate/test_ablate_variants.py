"""The ablation grid: the paper's default, variants files (validated like a catalog), the derived
per-variant catalogs (own stage directories, shared data), and `vora ablate`'s one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vora_core.ablation.chain import plan
from vora_core.ablation.variants import PAPER_GRID, Variant, check_stages, load_grid, variant_catalog
from vora_core.catalog import parse_catalog
from vora_core.errors import CatalogError

ROOT = Path(__file__).resolve().parents[2]
VORA = str(Path(sys.executable).with_name("vora"))


def catalog(tmp_path: Path, rank: int = 8):
    return parse_catalog({"name": "abl", "workdir": str(tmp_path / "run"),
                          "sources": {"s": {"kind": "synthetic_shapes"}},
                          "model": {"lora_rank": rank}})


def test_default_grid_is_the_papers_table_2(tmp_path):
    c = catalog(tmp_path, rank=8)
    keys = ("vision_attention", "distill", "lora_rank")
    got = {name: {k: getattr(variant_catalog(c, name, v).model, k) for k in keys}
           for name, v in PAPER_GRID.variants.items()}
    assert got == {
        "vanilla": {"vision_attention": "causal", "distill": "none", "lora_rank": 8},
        "bidir": {"vision_attention": "bidirectional", "distill": "none", "lora_rank": 8},
        "causal-blockwise": {"vision_attention": "causal", "distill": "blockwise", "lora_rank": 8},
        "bidir-last": {"vision_attention": "bidirectional", "distill": "last", "lora_rank": 8},
        "bidir-blockwise-half": {"vision_attention": "bidirectional", "distill": "blockwise", "lora_rank": 4},
        "vora": {"vision_attention": "bidirectional", "distill": "blockwise", "lora_rank": 8},
    }
    assert load_grid(ROOT / "ablations" / "paper.yaml").variants.keys() == PAPER_GRID.variants.keys()
    assert {n: v.model_overrides(8) for n, v in load_grid(ROOT / "ablations" / "paper.yaml").variants.items()} == {
        n: v.model_overrides(8) for n, v in PAPER_GRID.variants.items()}
    assert load_grid(None) is PAPER_GRID


def test_variant_catalog_has_its_own_stage_dirs_and_shares_the_data(tmp_path):
    c = catalog(tmp_path)
    v = variant_catalog(c, "bidir", PAPER_GRID.variants["bidir"])
    run = tmp_path / "run"
    assert v.name == "abl-bidir"
    assert v.run.root == run
    assert v.run.stage_dir("pretrain") == run / "ablations" / "bidir" / "pretrain"
    assert v.run.stage_dir("merge") == run / "ablations" / "bidir" / "merged"
    assert v.run.stage_dir("evaluate") == run / "ablations" / "bidir" / "eval"
    assert v.run.lock_file == run / "ablations" / "bidir" / "catalog.lock.yaml"
    assert v.run.mixture("pretrain") == run / "mixture" / "pretrain"  # shared
    assert v.run.sources("s") == run / "sources" / "s"  # held-out labels shared
    assert c.run.stage_dir("pretrain") == run / "pretrain"  # the run's own catalog is unchanged
    assert v.seed == c.seed and v.pretrain == c.pretrain  # same data order settings


def test_variants_file_is_validated_like_a_catalog(tmp_path):
    bad = tmp_path / "v.yaml"
    bad.write_text(yaml.safe_dump({"variants": {"a": {"vision_attention": "causal", "rank": 4}}}))
    with pytest.raises(CatalogError) as e:
        load_grid(bad)
    assert str(e.value) == (f"{bad}: invalid variants file:\n  variants.a.rank: unknown key (remove it or check its "
                            "spelling)")
    bad.write_text(yaml.safe_dump({"variants": {"a": {"vision_attention": "causal"}}}))
    with pytest.raises(CatalogError) as e:
        load_grid(bad)
    assert str(e.value) == f"{bad}: invalid variants file:\n  baseline 'vanilla' is not one of the variants (a)"
    bad.write_text(yaml.safe_dump({"baseline": "a", "variants": {"a": {"lora_rank": 4, "lora_rank_factor": 0.5}}}))
    with pytest.raises(CatalogError, match=r"variants\.a: give one of lora_rank, lora_rank_factor and full_llm"):
        load_grid(bad)
    bad.write_text(yaml.safe_dump({"baseline": "A", "variants": {"A": {}}}))
    with pytest.raises(CatalogError, match=r"variant name\(s\) 'A': use lowercase letters, digits and '-'"):
        load_grid(bad)
    with pytest.raises(CatalogError, match="nope.yaml: variants file not found"):
        load_grid(tmp_path / "nope.yaml")


def test_only_takes_the_per_variant_stages():
    assert check_stages(None) == ["pretrain", "merge", "finetune", "evaluate"]
    assert check_stages(["evaluate", "pretrain"]) == ["pretrain", "evaluate"]
    with pytest.raises(CatalogError) as e:
        check_stages(["mix"])
    assert str(e.value) == ("ablate: --only takes pretrain, merge, finetune, evaluate (download, recaption and mix run "
                            "once for every variant), got 'mix'")


def test_plan_one_unit_per_variant_whose_fingerprint_follows_its_settings(tmp_path):
    c = catalog(tmp_path)
    units = plan(c, PAPER_GRID)
    assert [u.id for u in units] == list(PAPER_GRID.variants)
    assert len({u.fingerprint for u in units}) == 6
    assert all(Path(u.params["catalog"]).is_file() for u in units)
    assert units[0].output == str(tmp_path / "run" / "ablations" / "vanilla" / "result.json")
    again = plan(c, PAPER_GRID)
    assert [u.fingerprint for u in again] == [u.fingerprint for u in units]  # deterministic
    only = plan(c, PAPER_GRID, ["pretrain"])
    assert only[0].params["stages"] == ["pretrain"] and only[0].fingerprint != units[0].fingerprint


def test_cli_bad_variants_and_only_are_one_line(tmp_path):
    cat = tmp_path / "c.yaml"
    cat.write_text(yaml.safe_dump({"name": "c", "workdir": "r", "sources": {"s": {"kind": "synthetic_shapes"}}}))
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    out = subprocess.run([VORA, "ablate", "c.yaml", "--only", "mix"], cwd=tmp_path, capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: ablate: --only takes pretrain, merge, finetune, evaluate")
    out = subprocess.run([VORA, "ablate", "c.yaml", "--variants", "v.yaml"], cwd=tmp_path, capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: v.yaml: variants file not found (see ablations/paper.yaml)"
    assert not (tmp_path / "r").exists()  # nothing ran


def test_full_llm_flag_adds_the_variant_without_lora(tmp_path):
    c = catalog(tmp_path, rank=8)
    grid = load_grid(None, full_llm=True)
    assert list(grid.variants) == [*PAPER_GRID.variants, "full-llm"]
    full = variant_catalog(c, "full-llm", grid.variants["full-llm"])
    assert (full.model.lora_rank, full.model.vision_attention, full.model.distill) == (0, "bidirectional", "blockwise")
    slower = Variant(full_llm=True, pretrain_lr=1e-5)
    low = variant_catalog(c, "full-llm-low-lr", slower)
    assert (low.model.lora_rank, low.pretrain.lr, low.pretrain.seed) == (0, 1e-5, c.pretrain.seed)
    assert load_grid(ROOT / "ablations" / "paper.yaml", full_llm=True).variants["full-llm"].full_llm


def test_grid_training_length_applies_to_every_variant(tmp_path):
    c = catalog(tmp_path)
    grid = load_grid(ROOT / "ablations" / "paper-short.yaml")
    assert (grid.pretrain_steps, grid.finetune_epochs) == (150, 0.125)
    assert list(grid.variants) == ["vora", "vanilla", "bidir", "bidir-last"]
    assert {n: v.model_overrides(8) for n, v in grid.variants.items()} == {
        n: PAPER_GRID.variants[n].model_overrides(8) for n in grid.variants}
    got = {n: (variant_catalog(c, n, v, grid).pretrain.steps, variant_catalog(c, n, v, grid).finetune.epochs)
           for n, v in grid.variants.items()}
    assert set(got.values()) == {(150, 0.125)}
    v = variant_catalog(c, "vora", grid.variants["vora"], grid)
    assert (v.pretrain.epochs, v.finetune.steps) == (None, None)
    assert (v.pretrain.seed, v.pretrain.lr, v.pretrain.seq_len) == (c.pretrain.seed, c.pretrain.lr, c.pretrain.seq_len)
    plain = variant_catalog(c, "vora", grid.variants["vora"])  # without the grid: the catalog's length
    assert (plain.pretrain.steps, plain.finetune.epochs) == (c.pretrain.steps, c.finetune.epochs)
    demo = load_grid(ROOT / "ablations" / "paper-demo.yaml")  # the README's run: the whole grid, 400 steps
    assert (demo.pretrain_steps, demo.finetune_epochs, demo.baseline) == (400, 0.25, "vanilla")
    assert {n: v.model_overrides(8) for n, v in demo.variants.items()} == \
        {n: v.model_overrides(8) for n, v in PAPER_GRID.variants.items()}
