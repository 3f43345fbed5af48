"""CPU thread settings that keep tiny-model training fast on a quiet machine and on a busy one: OpenMP
threads spin briefly, then sleep, while they wait, in every `vora` command and in the training ranks;
trainers that share the machine with each other do not spin at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flows import embedded
from vora_core.train.launch import OPENMP_SPIN_COUNT, child_environment, trainers_side_by_side


def _clear(monkeypatch) -> None:
    """Unset both, and have monkeypatch put back whatever was there after the test (set_defaults writes
    os.environ directly)."""
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_training_ranks_spin_briefly_then_sleep_unless_told_otherwise(monkeypatch):
    _clear(monkeypatch)
    env = child_environment()
    assert (env["OMP_WAIT_POLICY"], env["GOMP_SPINCOUNT"]) == ("PASSIVE", "3000")
    assert OPENMP_SPIN_COUNT == "3000"
    told = child_environment({"OMP_WAIT_POLICY": "ACTIVE"})  # the caller's choice: nothing added to it
    assert told["OMP_WAIT_POLICY"] == "ACTIVE" and "GOMP_SPINCOUNT" not in told
    monkeypatch.setenv("GOMP_SPINCOUNT", "30000")  # a user's own value wins
    assert child_environment()["GOMP_SPINCOUNT"] == "30000" and "OMP_WAIT_POLICY" not in child_environment()


def test_several_ranks_on_one_node_do_not_spin(monkeypatch):
    _clear(monkeypatch)
    assert child_environment(ranks=2)["GOMP_SPINCOUNT"] == "0"
    assert child_environment(ranks=1)["GOMP_SPINCOUNT"] == "3000"
    monkeypatch.setenv("GOMP_SPINCOUNT", "30000")
    assert child_environment(ranks=2)["GOMP_SPINCOUNT"] == "30000"


def test_trainers_side_by_side_sleep_without_spinning_and_the_setting_comes_back(monkeypatch):
    _clear(monkeypatch)
    embedded.set_defaults()
    with trainers_side_by_side(1):
        assert child_environment()["GOMP_SPINCOUNT"] == "3000"
    with trainers_side_by_side(3):
        assert child_environment()["GOMP_SPINCOUNT"] == "0"
    assert os.environ["GOMP_SPINCOUNT"] == "3000"
    monkeypatch.setenv("GOMP_SPINCOUNT", "500")  # the user's: left alone
    with trainers_side_by_side(3):
        assert child_environment()["GOMP_SPINCOUNT"] == "500"


def test_every_vora_command_sets_the_wait_policy_before_torch_loads(monkeypatch):
    _clear(monkeypatch)
    embedded.set_defaults()
    assert (os.environ["OMP_WAIT_POLICY"], os.environ["GOMP_SPINCOUNT"]) == ("PASSIVE", "3000")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.delenv("GOMP_SPINCOUNT")
    embedded.set_defaults()
    assert "GOMP_SPINCOUNT" not in os.environ


def test_the_cli_sets_them_before_it_imports_torch():
    """libgomp reads them once, as torch loads it: the CLI's own process (the teacher's pretraining,
    merge, evaluate) must have them set by then, not only its training children."""
    probe = (
        "import importlib.abc, os, sys\n"
        "class Spy(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'torch' and 'seen' not in os.environ:\n"
        "            os.environ['seen'] = os.environ.get('GOMP_SPINCOUNT', 'unset')\n"
        "        return None\n"
        "sys.meta_path.insert(0, Spy())\n"
        "import flows.cli\n"
        "print(os.environ['seen'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "3000"


def test_the_wait_policy_benchmark_times_each_setting_in_its_own_process():
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "benchmarks/openmp_wait.py", "--spin", "3000", "--rounds", "1",
                          "--batches", "1"], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("ms per batch of 64, the demo's teacher step; 1 process(es)")
    assert lines[1].startswith("round 1  GOMP_SPINCOUNT=3000") and float(lines[1].split()[-1]) > 0
    assert lines[2].startswith("GOMP_SPINCOUNT=3000") and lines[2].endswith("vs 3000: 1.00x")
