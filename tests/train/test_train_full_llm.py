"""The full-LLM pretraining variant (lora_rank 0, the paper's full-parameter ablation): every LLM
weight trains, the teacher stays frozen, and the merge stage passes the model through unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_world import World, vora_config

from vora_core.catalog import MergeSettings, PretrainSettings
from vora_core.model.merge_check import merge_and_check
from vora_core.train.launch import launch
from vora_core.train.prepare import prepare_spec

pytestmark = pytest.mark.slow


def test_full_llm_pretraining_trains_every_llm_weight_and_merges_unchanged(world: World, tmp_path):
    _, fields = vora_config(world, "square", lora_rank=0)
    assert fields["lora_rank"] == 0 and fields["distill"] == "blockwise"
    s = PretrainSettings(seq_len=160, steps=3, micro_batch=2, lr=1e-3, warmup_steps=1, checkpoint_every=3,
                         num_workers=0, cpu_threads=1)
    model = {"init": "parts", "llm": str(world.llm), "teacher": str(world.teacher), "fields": fields}
    spec, _ = prepare_spec("pretrain", tmp_path / "pretrain", world.mixture, world.run, model, str(world.llm), s,
                           "square")
    stats = launch(spec)
    assert stats["steps"] == 3
    trained = load_file(str(spec.final / "model.safetensors"))
    assert not [k for k in trained if "lora_" in k]
    before = load_file(str(Path(world.llm) / "model.safetensors"))
    llm = {k: v for k, v in trained.items() if k.startswith("llm.")}
    assert len(llm) == len(before)
    changed = [k for k, v in llm.items() if not torch.equal(v, before[k.removeprefix("llm.")])]
    assert len(changed) >= len(before) - 1  # every LLM weight trained (an unused embedding row set aside)
    teacher_before = load_file(str(Path(world.teacher) / "model.safetensors"))
    assert all(torch.equal(trained[f"teacher.{k}"], v) for k, v in teacher_before.items() if f"teacher.{k}" in trained)

    merged = merge_and_check(spec.final, tmp_path / "merged", MergeSettings(probe_images=1))
    assert merged["passed"] and merged["max_abs_logit_diff"] == 0.0
