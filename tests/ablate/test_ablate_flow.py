"""`vora ablate` end to end on a tiny catalog with a 2-variant grid: SIGKILL the real process while
the first variant pretrains, rerun (it resumes from the checkpoint), check the table and figures hold
one row per variant, then rerun once more: every finished variant is skipped."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vora_core.ablation.chain import run_ablation
from vora_core.ablation.variants import load_grid
from vora_core.catalog import load_catalog
from vora_core.workdir import read_marker

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
VORA = str(Path(sys.executable).parent / "vora")
VARIANTS = ["vanilla", "vora"]
PRETRAIN_STEPS = 8


def tiny_catalog(tmp_path: Path) -> Path:
    """catalogs/demo.yaml shrunk: 16 images, 2-block models, a few steps, short answers."""
    c = yaml.safe_load((ROOT / "catalogs" / "demo.yaml").read_text())
    c["name"], c["workdir"] = "abl", str(tmp_path / "abl")
    c["sources"]["shapes"].update(n=16, heldout=3)
    c["download"].update(number_sample_per_shard=8, rows_per_unit=16)
    c["recaption"].update(max_new_tokens=4, batch_size=8)
    c["model"]["tiny"].update(hidden_size=32, layers=2, heads=2, kv_heads=1, intermediate_size=64,
                              teacher_hidden_size=16, teacher_layers=2, teacher_heads=1,
                              teacher_intermediate_size=32, vocab_size=400, teacher_pretrain_images=32,
                              teacher_pretrain_epochs=1)
    c["model"].update(lora_rank=4, image_size=56)
    for stage in ("pretrain", "finetune"):
        c[stage].update(steps=2, epochs=None, seq_len=512, micro_batch=2, grad_accum=1, checkpoint_every=2,
                        warmup_steps=1, num_workers=0, cpu_threads=1)
    c["pretrain"]["steps"] = PRETRAIN_STEPS
    c["evaluate"].update(batch_size=8, max_new_tokens=3)
    path = tmp_path / "abl.yaml"
    path.write_text(yaml.safe_dump(c, sort_keys=False))
    (tmp_path / "two.yaml").write_text(yaml.safe_dump({"variants": {
        "vanilla": {"vision_attention": "causal", "distill": "none"},
        "vora": {"vision_attention": "bidirectional", "distill": "blockwise"}}}))
    return path


def command(tmp_path: Path, catalog: Path) -> list[str]:
    return [VORA, "ablate", str(catalog), "--variants", str(tmp_path / "two.yaml")]


def env() -> dict[str, str]:
    # A loaded machine can take over a minute to start the embedded Prefect server (default limit: 20 s).
    out = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300"}
    out.pop("PREFECT_API_URL", None)  # its own embedded server, like a user's run
    out.pop("PREFECT_HOME", None)
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):  # vora's own defaults, as a user gets them
        out.pop(name, None)
    return out


def run_to_end(tmp_path: Path, catalog: Path, *options: str) -> str:
    done = subprocess.run([*command(tmp_path, catalog), *options], capture_output=True, text=True, timeout=1200,
                          env=env(), cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def test_killed_ablation_resumes_then_skips_finished_variants(tmp_path):
    catalog = tiny_catalog(tmp_path)
    root = tmp_path / "abl"
    ablations = root / "ablations"
    checkpoints = ablations / "vanilla" / "pretrain" / "checkpoints"

    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(command(tmp_path, catalog), env=env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 900
    while not (checkpoints.exists() and any(checkpoints.glob("step-*"))):
        assert proc.poll() is None, f"vora ablate ended ({proc.returncode}) before the kill point: " + \
            (tmp_path / "first.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the kill point was never reached"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert not (ablations / "vanilla" / "pretrain" / "final").exists()  # killed mid-pretraining
    shared = {p: p.stat().st_mtime_ns for p in (root / "models").glob("*.done.json")}
    assert sorted(p.name for p in shared) == ["llm.done.json", "teacher.done.json"]

    log = run_to_end(tmp_path, catalog, "--parallel", "2")  # vanilla resumes while vora starts
    assert "Flow run 'abl-ablate' - ablate: variants vanilla, vora" in log  # named as every stage's run is
    # the flow's log follows each variant's training (not a terminal: plain n/N lines)
    assert "ablate teacher: 1/1 epochs, done in" not in log  # built before the kill, not again
    first = (tmp_path / "first.log").read_text()
    assert "ablate teacher: 1/1 epochs, done in" in first, first[-3000:]  # its minutes are not silent
    assert "ablate teacher: held-out accuracy shape " in first, first[-3000:]  # and what it learnt
    for name in VARIANTS:
        assert f"{name} pretrain: {PRETRAIN_STEPS}/{PRETRAIN_STEPS} steps, done in" in log, log[-3000:]
        assert f"{name} finetune: 2/2 steps, done in" in log, log[-3000:]
        # a finished variant's line: its final losses and every benchmark's score
        assert re.search(rf"ablate {name}: done, pretrain loss \d+\.\d{{3}}, finetune loss \d+\.\d{{3}}, "
                         r"shapes-heldout-mc \d\.\d{3}, shapes-heldout-yesno \d\.\d{3}, "
                         r"shapes-heldout-short \d\.\d{3}", log), log[-3000:]
    assert {p: p.stat().st_mtime_ns for p in shared} == shared  # shared models built once
    steps = [json.loads(line)["step"] for line in
             (ablations / "vanilla" / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, PRETRAIN_STEPS + 1))  # resumed: every step once, in order
    # Alone, a variant's threads spin briefly before they sleep; two variants side by side do not spin.
    waits = re.findall(r"GOMP_SPINCOUNT (\d+)\)", (ablations / "vanilla" / "pretrain" / "train.log").read_text())
    assert waits == ["3000", "0"]
    assert re.findall(r"GOMP_SPINCOUNT (\d+)\)", (ablations / "vora" / "pretrain" / "train.log").read_text()) == ["0"]
    for name in VARIANTS:
        assert read_marker(ablations / name / "pretrain" / "final")["stats"]["steps"] == PRETRAIN_STEPS
        summary = json.loads((ablations / name / "eval" / "summary.json").read_text())
        assert sorted(summary["benchmarks"]) == ["shapes-heldout-mc", "shapes-heldout-short", "shapes-heldout-yesno"]
    for figure in ("loss.png", "distill.png", "efficiency.png"):
        assert (ablations / figure).read_bytes()[:4] == b"\x89PNG", figure
    rows = json.loads((ablations / "table.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == VARIANTS
    assert [r["steps"] for r in rows] == [PRETRAIN_STEPS, PRETRAIN_STEPS]
    assert [sorted(r["scores"]) for r in rows] == [["shapes-heldout-mc", "shapes-heldout-short",
                                                    "shapes-heldout-yesno"]] * 2
    assert rows[0]["avg_distill"] is None and rows[1]["avg_distill"] > 0  # only vora distils
    assert rows[0]["data_order"] == rows[1]["data_order"] is not None  # same samples, same order
    efficiency = json.loads((ablations / "efficiency.json").read_text())
    assert sorted(efficiency["variants"]) == VARIANTS and efficiency["baseline"] == "vanilla"
    md = (ablations / "table.md").read_text()
    assert [line.split(" | ")[0] for line in md.splitlines() if line.startswith("| vanilla |") or
            line.startswith("| vora |")][:2] == ["| vanilla", "| vora"]

    markers = {name: (ablations / name / "result.json.done.json").stat().st_mtime_ns for name in VARIANTS}
    finals = {name: (ablations / name / "pretrain" / "final.done.json").stat().st_mtime_ns for name in VARIANTS}
    # Rerun (without Prefect, to keep the test short: the flow's task runs this same marker logic).
    results = run_ablation(load_catalog(catalog), load_grid(tmp_path / "two.yaml"))
    assert [(r["unit"], r["status"]) for r in results] == [("vanilla", "skipped"), ("vora", "skipped")]
    assert {name: (ablations / name / "result.json.done.json").stat().st_mtime_ns for name in VARIANTS} == markers
    assert {name: (ablations / name / "pretrain" / "final.done.json").stat().st_mtime_ns for name in VARIANTS} == finals
