"""The merge stage: an exact merge passes its probe, a corrupted merge fails the stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vora_core.catalog import MergeSettings, parse_catalog
from vora_core.errors import StageError
from vora_core.model import merge_check
from vora_core.model.merge import merge_lora
from vora_core.stages import merge, run_stage
from vora_core.workdir import read_marker


def _catalog(tmp_path: Path, pretrain: Path, **merge) -> object:
    return parse_catalog({
        "name": "t", "workdir": str(tmp_path / "run"),
        "sources": {"shapes": {"kind": "synthetic_shapes", "n": 2, "heldout": 0}},
        "merge": {"source": str(pretrain), **merge},
    })


def test_fp32_merge_passes_and_reruns_skip(tiny_eval, tmp_path):
    catalog = _catalog(tmp_path, tiny_eval["pretrain"])
    [result] = run_stage("merge", catalog)
    out = catalog.run.stage_dir("merge")
    assert result["status"] == "done"
    assert result["max_abs_logit_diff"] <= result["bound"] == 1e-5 * max(1.0, result["max_abs_logit"])
    assert result["probe_rows"] == 3 and result["probe_images"] == 2 and result["rounding_floor"] is None
    assert result["max_abs_logit"] > 0.1  # the probe compares real logits, not zeros
    config = json.loads((out / "config.json").read_text())
    assert (config["lora_rank"], config["distill"], config["teacher_config"]) == (0, "none", None)
    assert read_marker(out)["stats"]["max_abs_logit_diff"] == result["max_abs_logit_diff"]
    [again] = run_stage("merge", catalog)
    assert again["status"] == "skipped"
    assert merge.summary(catalog)[0]["done"] is True


def test_fp32_bound_grows_with_the_logits(tiny_eval, tmp_path):
    """A trained LLM's logits reach tens: an exact fp32 merge then differs by more than 1e-5 absolute
    (a demo run with the tiny LLM's reading practice: 1.8e-5 at logits up to 9.9), within 1e-5 per unit."""
    src = tmp_path / "pretrain"
    src.mkdir()
    for f in tiny_eval["pretrain"].iterdir():
        if f.is_file():
            (src / f.name).write_bytes(f.read_bytes())
    weights = load_file(src / "model.safetensors")
    weights["llm.model.norm.weight"] = weights["llm.model.norm.weight"] * 400  # logits x 400
    save_file(weights, src / "model.safetensors", metadata={"format": "pt"})
    stats = merge_check.merge_and_check(src, tmp_path / "merged", MergeSettings())
    assert stats["max_abs_logit"] > 20
    assert stats["max_abs_logit_diff"] > 1e-5  # the absolute bound would call this exact merge wrong
    assert stats["passed"] and stats["bound"] == pytest.approx(1e-5 * stats["max_abs_logit"])


def test_bf16_storage_within_its_measured_bound(tiny_eval, tmp_path):
    stats = merge_check.merge_and_check(tiny_eval["pretrain"], tmp_path / "merged",
                                        MergeSettings(dtype="bfloat16"))
    assert stats["rounding_floor"] > 0  # rounding to bf16 does change the logits...
    assert stats["max_abs_logit_diff"] > 1e-5  # ...so the fp32 tolerance would not apply
    assert stats["bound"] == pytest.approx(4.0 * stats["rounding_floor"] + 1e-5 * max(1.0, stats["max_abs_logit"]))
    assert stats["max_abs_logit_diff"] <= stats["bound"]
    weights = load_file(tmp_path / "merged" / "model.safetensors")
    assert weights["llm.model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16


def _lose_one_delta(src: Path, out: Path, dtype=None, overwrite=False) -> Path:
    """A corrupted merge: correct everywhere except one projection, which keeps its base weight."""
    merge_lora(src, out, dtype=dtype, overwrite=overwrite)
    merged = load_file(out / "model.safetensors")
    base = load_file(src / "model.safetensors")
    key = "llm.model.layers.0.mlp.down_proj.weight"
    merged[key] = base[key.replace(".weight", ".base_layer.weight")].to(merged[key].dtype)
    save_file(merged, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_corrupted_merge_fails_the_stage(tiny_eval, tmp_path, monkeypatch, dtype):
    monkeypatch.setattr(merge_check, "merge_lora", _lose_one_delta)
    catalog = _catalog(tmp_path, tiny_eval["pretrain"], dtype=dtype)
    with pytest.raises(StageError, match=rf"merge: merged model differs from the unmerged one by .* above the "
                                         rf"bound .* for {dtype} storage; the merge is wrong"):
        run_stage("merge", catalog)
    out = catalog.run.stage_dir("merge")
    assert not out.exists() and read_marker(out) is None  # nothing half-done is left in place
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".merged")] == []


def test_missing_pretrain_dir_is_a_clear_error(tmp_path):
    with pytest.raises(StageError, match=r"merge: .*nope is not a model directory \(no config.json\); run the "
                                         r"pretrain stage first or set merge.source"):
        merge.merge_command(str(tmp_path / "nope"), str(tmp_path / "out"))
