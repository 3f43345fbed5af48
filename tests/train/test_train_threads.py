"""CPU thread settings that keep tiny-model training fast on a busy machine: OpenMP threads sleep instead
of spinning while they wait, in every `vora` command and in the training ranks."""

from __future__ import annotations

from flows import embedded
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
