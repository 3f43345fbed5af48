"""The whole pipeline on a small copy of the demo: a fresh run, a rerun that rewrites nothing, stage
selection, settings changes that rerun only what they affect, and crash-and-rerun (SIGKILL during
recaption, then during pretrain, in a real `vora run` process)."""

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

from vora_core.catalog import load_catalog
from vora_core.workdir import read_marker

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
VORA = str(Path(sys.executable).parent / "vora")
STAGES = ["download", "recaption", "mix", "pretrain", "merge", "finetune", "evaluate"]


def small_demo(tmp_path: Path, name: str = "small", **changes: dict) -> Path:
    """catalogs/demo.yaml with fewer images, smaller models and a few training steps."""
    c = yaml.safe_load((ROOT / "catalogs" / "demo.yaml").read_text())
    c["name"], c["workdir"] = name, str(tmp_path / name)
    c["sources"]["shapes"].update(n=24, heldout=4)
    c["download"].update(number_sample_per_shard=6, rows_per_unit=12)
    c["recaption"].update(max_new_tokens=6, batch_size=8)
    c["model"]["tiny"].update(hidden_size=32, layers=2, heads=2, kv_heads=1, intermediate_size=64,
                              teacher_hidden_size=16, teacher_layers=1, teacher_heads=1,
                              teacher_intermediate_size=32, vocab_size=400, teacher_pretrain_images=48,
                              teacher_pretrain_epochs=1)
    c["model"].update(lora_rank=4, image_size=56)
    for stage in ("pretrain", "finetune"):
        c[stage].update(steps=4, epochs=None, seq_len=512, micro_batch=2, grad_accum=1, checkpoint_every=2,
                        warmup_steps=1, num_workers=0, cpu_threads=1)
    c["evaluate"].update(batch_size=8, max_new_tokens=4)
    for key, value in changes.items():
        c[key] = {**c.get(key, {}), **value}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(c, sort_keys=False))
    return path


def files_and_mtimes(root: Path) -> dict[str, int]:
    """Every file of a run directory except Prefect's own database."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and ".prefect" not in p.parts}


def statuses(results: dict) -> dict[str, list[str]]:
    return {stage: sorted({r["status"] for r in rows}) for stage, rows in results.items()}


@pytest.fixture(scope="module")
def finished(prefect_harness, tmp_path_factory):
    """One complete pipeline run (module-scoped: the tests below start from it)."""
    from flows.pipeline import vora_pipeline

    tmp = tmp_path_factory.mktemp("pipeline")
    catalog = small_demo(tmp)
    results = vora_pipeline(str(catalog))
    return catalog, results


def test_fresh_run_does_every_stage(finished):
    catalog, results = finished
    assert list(results) == STAGES
    assert statuses(results) == {stage: ["done"] for stage in STAGES}
    run = load_catalog(catalog).run
    for path in ("pretrain/final", "merged", "finetune/final", "finetune/loss.png", "eval/summary.json",
                 "mixture/pretrain/stats.json", "mixture/finetune/stats.json"):
        assert (run.root / path).exists(), path
    summary = json.loads((run.root / "eval" / "summary.json").read_text())
    assert sorted(summary["benchmarks"]) == ["shapes-heldout-mc", "shapes-heldout-short", "shapes-heldout-yesno"]
    mix_stats = json.loads((run.root / "mixture" / "finetune" / "stats.json").read_text())
    assert mix_stats["text_rows_used"]["shapes_vqa"] == 24 * 8  # every training image, `draws` times

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    keys = {stage: [f"small-{stage}"] for stage in STAGES} | {
        "pretrain": ["small-pretrain", "small-pretrain-loss", "small-pretrain-steps"],
        "finetune": ["small-finetune", "small-finetune-loss", "small-finetune-steps"]}
    with get_client(sync_client=True) as client:
        for wanted in keys.values():
            for key in wanted:
                found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
                assert found, f"no artifact {key}"
                if key.endswith("-loss"):
                    assert "data:image/png;base64," in found[0].data
                if key.endswith("-steps"):
                    assert max(a.data for a in found) == 100.0


def test_rerun_skips_every_unit_and_rewrites_nothing(finished):
    from flows.pipeline import vora_pipeline

    catalog, _ = finished
    root = load_catalog(catalog).run.root
    before = files_and_mtimes(root)
    t0 = time.monotonic()
    results = vora_pipeline(str(catalog))
    assert time.monotonic() - t0 < 60
    assert statuses(results) == {stage: ["skipped"] for stage in STAGES}
    assert files_and_mtimes(root) == before


def test_only_from_and_force(finished):
    from flows.pipeline import vora_pipeline

    catalog, _ = finished
    assert list(vora_pipeline(str(catalog), only=["recaption"])) == ["recaption"]
    assert list(vora_pipeline(str(catalog), from_stage="finetune")) == ["finetune", "evaluate"]
    forced = vora_pipeline(str(catalog), from_stage="merge", until_stage="evaluate", force=["evaluate"])
    assert statuses(forced) == {"merge": ["skipped"], "finetune": ["skipped"], "evaluate": ["done"]}


def test_changing_evaluate_settings_reruns_only_evaluate(finished, tmp_path):
    from flows.pipeline import vora_pipeline

    catalog, _ = finished
    c = yaml.safe_load(catalog.read_text())
    c["evaluate"]["max_new_tokens"] = 3
    changed = catalog.with_name("small-eval.yaml")
    changed.write_text(yaml.safe_dump(c, sort_keys=False))
    results = vora_pipeline(str(changed))
    expected = {stage: ["skipped"] for stage in STAGES[:-1]} | {"evaluate": ["done"]}
    assert statuses(results) == expected


def test_forced_mix_and_a_copied_run_redo_nothing_downstream(finished, tmp_path):
    """Fingerprints name the run's own files by content: a mix stage redone with the same bytes, or the
    run directory copied by a tool that resets every mtime (`cp -r`, rsync, an object-store sync), does
    not retrain, remerge or re-evaluate."""
    import shutil

    from flows.pipeline import vora_pipeline

    catalog, _ = finished
    vora_pipeline(str(catalog))  # as this catalog asks (the tests above changed settings in this run directory)
    root = load_catalog(catalog).run.root
    mixture = root / "mixture" / "pretrain" / "part-00000.parquet"
    before = (mixture.read_bytes(), mixture.stat().st_mtime_ns)
    forced = vora_pipeline(str(catalog), force=["mix"])
    assert (mixture.read_bytes(), mixture.stat().st_mtime_ns != before[1]) == (before[0], True)  # same bytes, new file
    assert statuses(forced) == {stage: ["done"] if stage == "mix" else ["skipped"] for stage in STAGES}

    copy = tmp_path / "copy"
    shutil.copytree(root, copy, copy_function=shutil.copy, ignore=shutil.ignore_patterns(".prefect"))
    c = yaml.safe_load(catalog.read_text())
    c["workdir"] = str(copy)
    copied = tmp_path / "copied.yaml"
    copied.write_text(yaml.safe_dump(c, sort_keys=False))
    assert statuses(vora_pipeline(str(copied))) == {stage: ["skipped"] for stage in STAGES}


# ------------------------------------------------------------------------------ crash and rerun


def run_until(catalog: Path, ready, until: str, timeout: float = 600) -> subprocess.Popen:
    """Start `vora run --until UNTIL` in its own process group; SIGKILL the group once `ready()` is true.
    (The pipeline stops after `until` to keep the suite short; the stages after it are covered above.)"""
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)  # its own embedded server, like a user's run
    log = catalog.with_suffix(".log").open("w")
    proc = subprocess.Popen([VORA, "run", str(catalog), "--until", until], env=env, stdout=log,
                            stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"vora run ended ({proc.returncode}) before the kill point"
        assert time.monotonic() < deadline, "the kill point was never reached"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    return proc


def rerun(catalog: Path, until: str) -> str:
    """`vora run --until UNTIL` to the end; its output."""
    done = subprocess.run([VORA, "run", str(catalog), "--until", until], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def test_sigkill_during_recaption_then_during_pretrain_then_rerun_resumes_both(tmp_path):
    """One run killed twice (one catalog, so the shared stages are paid for once): the rerun after a
    kill in recaption redoes only the unfinished shards, the rerun after a kill in pretraining resumes
    from its checkpoint and redoes none of the finished data stages."""
    catalog = small_demo(tmp_path, "kill", recaption={"batch_size": 2, "max_new_tokens": 16},
                         pretrain={"steps": 8, "checkpoint_every": 2})
    run = load_catalog(catalog).run
    captions = run.root / "captions" / "shapes"
    checkpoints = run.root / "pretrain" / "checkpoints"

    def first_shard_captioned() -> bool:
        return len(list(captions.glob("*.parquet.done.json"))) >= 1

    def has_checkpoint() -> bool:
        return any(checkpoints.glob("step-*")) if checkpoints.exists() else False

    run_until(catalog, first_shard_captioned, "pretrain")
    finished_before = {p.name: p.stat().st_mtime_ns for p in captions.glob("*.parquet.done.json")}
    assert 1 <= len(finished_before) < 4  # killed mid-stage
    assert not checkpoints.exists()

    run_until(catalog, has_checkpoint, "pretrain")  # the rerun finishes recaption and mix, then is killed
    after = {p.name: p.stat().st_mtime_ns for p in captions.glob("*.parquet.done.json")}
    assert len(after) == 4
    assert {k: after[k] for k in finished_before} == finished_before  # finished shards were not redone
    assert (run.root / "mixture" / "finetune" / "stats.json").exists()
    assert not (run.root / "pretrain" / "final").exists()  # killed mid-pretraining
    # the tiny teacher's pretraining, before the first step, has its own progress line, then what it learnt
    log = catalog.with_suffix(".log").read_text()
    assert "pretrain teacher: 1/1 epochs, done in" in log
    assert re.search(r"pretrain teacher: held-out accuracy shape \d\.\d\d, colour \d\.\d\d, position \d\.\d\d, "
                     r"background \d\.\d\d", log)
    # each unit's line carries its figures, done or skipped
    assert "download shapes/00000: skipped, 12 images, 0 failed" in log
    assert "mix text:shapes_vqa: done, 192 rows, 0 rejected" in log
    assert re.search(r"recaption shapes/0000\d: done, 6 captions of 6 images", log)

    data_markers = {p: p.stat().st_mtime_ns for d in ("shards", "captions", "mixture")
                    for p in (run.root / d).rglob("*.done.json")}
    output = rerun(catalog, "pretrain")
    assert re.search(r"pretrain pretrain: done, 8 steps, loss \d+\.\d{3} → \d+\.\d{3}, distill \d+\.\d{3}", output)
    assert {p: p.stat().st_mtime_ns for p in data_markers} == data_markers
    steps = [json.loads(line)["step"] for line in (run.root / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # resumed: every step once, in order
    assert read_marker(run.root / "pretrain" / "final")["stats"]["steps"] == 8
