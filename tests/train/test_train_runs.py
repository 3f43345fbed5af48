"""Training runs through torchrun on CPU: kill-and-resume equality, two gloo ranks, the NaN stop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from train_world import World, vora_config

from vora_core.catalog import PretrainSettings
from vora_core.train.launch import TrainingFailed, launch, torchrun_command
from vora_core.train.metrics import read_metrics
from vora_core.train.prepare import prepare_spec

pytestmark = pytest.mark.slow
COMPARED = ("loss", "lm_loss", "distill", "distill_blocks", "grad_norm", "lr", "tokens", "samples", "epoch", "skipped")


def make_spec(world: World, out: Path, llm: Path | None = None, **settings):
    _, fields = vora_config(world, "native", max_image_tokens=20)
    base = dict(seq_len=160, steps=8, micro_batch=2, grad_accum=2, lr=2e-3, warmup_steps=2, checkpoint_every=4,
                keep_last=2, num_workers=0, cpu_threads=1, seed=0)
    s = PretrainSettings(**{**base, **settings})
    model = {"init": "parts", "llm": str(llm or world.llm), "teacher": str(world.teacher), "fields": fields}
    spec, _ = prepare_spec("pretrain", out, world.mixture, world.run, model, str(world.llm), s, "native")
    return spec


def final_weights(spec) -> dict[str, torch.Tensor]:
    return load_file(str(Path(spec.out_dir) / "final" / "model.safetensors"))


def test_kill_and_resume_equals_an_uninterrupted_run(world, tmp_path):
    settings = dict(steps=20, checkpoint_every=4, num_workers=1)  # > 2 epochs: the resume crosses an epoch
    reference = make_spec(world, tmp_path / "a", **settings)
    launch(reference)
    ref_rows = read_metrics(reference.metrics)
    assert [r["step"] for r in ref_rows] == list(range(1, 21))
    assert len({r["epoch"] for r in ref_rows}) >= 2

    spec = make_spec(world, tmp_path / "b", **settings)
    spec_path = spec.save(Path(spec.out_dir) / "spec.json")
    child = subprocess.Popen(torchrun_command(spec_path, spec.settings), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = spec.checkpoints / "step-0000008"
    deadline = time.monotonic() + 120
    while not target.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert target.exists() and not spec.final.exists(), "the run should have been killed mid-way"
    assert (Path(spec.out_dir) / "loss.png").exists()  # drawn at the step-4 checkpoint, before step 5 began
    killed_at = len(read_metrics(spec.metrics))
    assert 8 <= killed_at < 20

    stats = launch(spec)  # the same command again: resumes from the newest complete checkpoint
    assert stats["steps"] == 20
    log = (Path(spec.out_dir) / "train.log").read_text()
    assert "resumed from" in log and "step-00000" in log
    rows = read_metrics(spec.metrics)
    assert [r["step"] for r in rows] == list(range(1, 21))  # lines after the checkpoint were rewritten once
    for ref, got in zip(ref_rows, rows, strict=True):
        assert {k: ref[k] for k in COMPARED} == {k: got[k] for k in COMPARED}, ref["step"]
    a, b = final_weights(reference), final_weights(spec)
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [p.name for p in sorted(spec.checkpoints.iterdir())] == ["step-0000016", "step-0000020"]  # keep_last
    assert (Path(spec.out_dir) / "loss.png").stat().st_size > 1000


def test_frozen_bf16_trains_the_same_steps_and_saves_what_it_loaded(world, tmp_path):
    llm = tmp_path / "llm-bf16"  # a bf16 checkpoint's values, as Qwen2.5's, stored in fp32
    shutil.copytree(world.llm, llm)
    weights = load_file(str(llm / "model.safetensors"))
    save_file({k: v.to(torch.bfloat16).float() for k, v in weights.items()}, str(llm / "model.safetensors"),
              metadata={"format": "pt"})
    specs = {lean: make_spec(world, tmp_path / str(lean), llm=llm, steps=3, checkpoint_every=3, precision="bf16",
                             frozen_bf16=lean) for lean in (True, False)}
    for spec in specs.values():
        launch(spec)
    lean_log, plain_log = ((Path(specs[k].out_dir) / "train.log").read_text() for k in (True, False))
    assert "frozen linear tensors in bf16" in lean_log and "in bf16" not in plain_log
    lean_rows, plain_rows = (read_metrics(specs[k].metrics) for k in (True, False))
    assert [{k: r[k] for k in COMPARED} for r in lean_rows] == [{k: r[k] for k in COMPARED} for r in plain_rows]
    a, b = final_weights(specs[True]), final_weights(specs[False])
    assert a.keys() == b.keys() and {t.dtype for t in a.values()} == {torch.float32}
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def two_ranks(world, tmp_path_factory):
    """2 gloo ranks, DDP or FSDP2, with the per-rank data trace (each strategy trained once per module)."""
    done: dict[str, tuple] = {}

    def run(strategy: str):
        if strategy not in done:
            out = tmp_path_factory.mktemp("gloo") / strategy
            spec = make_spec(world, out, steps=3, micro_batch=1, grad_accum=2, nproc_per_node=2,
                             checkpoint_every=2, strategy=strategy)
            spec.extra["trace_data"] = True
            done[strategy] = (spec, launch(spec))
        return done[strategy]

    return run


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_gloo_ranks_see_disjoint_data_and_agree(two_ranks, strategy):
    spec, stats = two_ranks(strategy)
    assert stats["world"] == 2 and stats["steps"] == 3
    trace = Path(spec.out_dir) / "data_trace"
    seen = {r: [json.loads(line) for line in (trace / f"rank-{r}.jsonl").read_text().splitlines()] for r in (0, 1)}
    assert [x["step"] for x in seen[0]] == [x["step"] for x in seen[1]] == [1, 2, 3]
    samples = {r: [i for x in seen[r] for i in x["samples"]] for r in (0, 1)}
    assert samples[0] and samples[1]
    assert not set(samples[0]) & set(samples[1])  # disjoint
    assert len(set(samples[0])) == len(samples[0])  # and no sample twice within the epoch
    w0, w1 = (load_file(str(trace / f"rank-{r}.safetensors")) for r in (0, 1))
    assert set(w0) == set(w1) and len(w0) > 0
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # identical weights on both ranks
    # ... which are the weights of final/ (rank 0 writes it) and trained ones (LoRA B moved from zero).
    final = final_weights(spec)
    assert all(torch.equal(final[k], w0[k]) for k in w0 if k in final)
    assert any(w0[k].abs().sum() > 0 for k in w0 if "lora_B" in k)
    rows = read_metrics(spec.metrics)
    assert [r["step"] for r in rows] == [1, 2, 3]  # rank 0 alone writes the metrics
    assert [p.name for p in sorted(spec.checkpoints.iterdir())] == ["step-0000002", "step-0000003"]


def test_fsdp2_trains_what_ddp_trains(two_ranks):
    """Same data, same settings: FSDP2 (sharded, reduce-scatter) and DDP (all-reduce) give the same run.
    A text-only micro-batch on one rank and an image on the other must not desync FSDP2's collectives."""
    (ddp, _), (fsdp, _) = two_ranks("ddp"), two_ranks("fsdp2")
    a, b = read_metrics(ddp.metrics), read_metrics(fsdp.metrics)
    for key in ("loss", "lm_loss", "distill", "grad_norm"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=1e-5, abs=1e-6), key
    wa, wb = final_weights(ddp), final_weights(fsdp)
    assert set(wa) == set(wb)
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6) for k in wa)


def test_non_finite_steps_stop_the_run_and_keep_the_checkpoints(world, tmp_path):
    spec = make_spec(world, tmp_path / "nan", steps=30, lr=1e5, max_grad_norm=None, warmup_steps=0,
                     nan_tolerance=3, checkpoint_every=2, keep_last=10)
    with pytest.raises(TrainingFailed) as e:
        launch(spec)
    message = str(e.value)
    assert "pretrain training diverged (non-finite losses)" in message
    assert "3 non-finite steps in a row" in message and "Last good checkpoint:" in message
    rows = read_metrics(spec.metrics)
    assert [r["skipped"] for r in rows[-3:]] == [True, True, True]
    assert rows[-1]["nan_steps"] >= 3
    assert not spec.final.exists()
    checkpoints = sorted(spec.checkpoints.iterdir())
    assert checkpoints
    # Skipped steps never change the weights: every checkpoint after the first bad step is identical.
    first_bad = next(r["step"] for r in rows if r["skipped"])
    after = [p for p in checkpoints if int(p.name.split("-")[1]) >= first_bad - 1]
    tensors = [load_file(str(p / "trainable.safetensors")) for p in after]
    for t in tensors[1:]:
        assert all(torch.equal(t[k], tensors[0][k]) for k in t)


def test_worker_entry_point_reports_bad_spec(tmp_path):
    bad = tmp_path / "spec.json"
    bad.write_text(json.dumps({"stage": "nope", "out_dir": str(tmp_path), "index": "x", "tokenizer": "x",
                               "model": {"init": "parts"}, "settings": {}}))
    proc = subprocess.run([sys.executable, "-m", "vora_core.train.worker", "--spec", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "training stage 'nope' is not one of ('pretrain', 'finetune')" in proc.stderr
