"""CPU thread settings that keep tiny-model training fast on a busy machine: the training ranks' OpenMP
threads sleep instead of spinning while they wait, and the tiny teacher pretrains on one thread."""

from __future__ import annotations

import torch

from flows import embedded
from vora_core.catalog import SyntheticShapesSource
from vora_core.model.tiny import build_tiny_teacher
from vora_core.train import teacher
from vora_core.train.launch import child_environment


def test_training_ranks_wait_passively_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert child_environment()["OMP_WAIT_POLICY"] == "PASSIVE"
    assert child_environment({"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # a user's own value wins
    assert child_environment()["OMP_WAIT_POLICY"] == "ACTIVE"


def test_every_vora_command_sets_passive_waiting_before_torch_loads(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    embedded.set_defaults()
    assert embedded.os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_teacher_pretrains_on_one_thread_and_gives_the_threads_back(tmp_path, monkeypatch):
    path = build_tiny_teacher(tmp_path / "t", image_size=28, patch_size=14, hidden_size=16, num_hidden_layers=1,
                              num_attention_heads=1, intermediate_size=32)
    seen: list[int] = []
    step = torch.optim.AdamW.step

    def counting_step(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting_step)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        src = SyntheticShapesSource(kind="synthetic_shapes", min_side=40, max_side=56)
        teacher.pretrain_teacher(path, src, images=64, epochs=2, lr=1e-3, batch_size=32)
        assert seen == [1, 1, 1, 1]  # 2 epochs x 2 batches, each on one thread
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
