"""The pretrain and finetune flows under Prefect, and what they hand to merge and evaluate:
pretrain_flow → merge stage on pretrain/final → finetune_flow from <workdir>/merged → load
finetune/final (the directory `evaluate.model: finetune` names) and generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from train_world import World

from vora_core.catalog import load_catalog
from vora_core.workdir import read_marker

pytestmark = pytest.mark.slow
METRIC_FIELDS = {
    "step", "loss", "lm_loss", "distill", "distill_blocks", "grad_norm", "skipped", "nan_steps", "lr", "epoch",
    "total_steps", "tokens", "samples", "padding_fraction", "tokens_per_s", "samples_per_s", "step_s",
    "data_wait_s", "skipped_images", "skipped_images_total",
}
TRAIN = dict(seq_len=160, micro_batch=2, grad_accum=1, warmup_steps=1, checkpoint_every=2, num_workers=0,
             cpu_threads=1)


def catalog_file(world: World, root: Path) -> Path:
    """A catalog whose run directory sees the world's shards and trains on the world's mixture."""
    workdir = root / "run"
    (workdir).mkdir(parents=True)
    (workdir / "shards").symlink_to(world.run.root / "shards", target_is_directory=True)
    c = {
        "name": "trainflow", "workdir": str(workdir),
        "sources": {"shapes": {"kind": "synthetic_shapes", "n": 2, "heldout": 0}},
        "model": {"llm": str(world.llm), "teacher": str(world.teacher), "lora_rank": 4, "image_size": 32,
                  "patch_size": 8},
        "pretrain": {**TRAIN, "steps": 3, "lr": 2e-3, "mixture": str(world.mixture)},
        "finetune": {**TRAIN, "steps": 2, "lr": 1e-3, "mixture": str(world.mixture)},
        "evaluate": {"model": "finetune"},
    }
    path = root / "trainflow.yaml"
    path.write_text(yaml.safe_dump(c, sort_keys=False))
    return path


def artifacts(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


@pytest.fixture(scope="module")
def pretrained(prefect_harness, world, tmp_path_factory) -> Path:
    from flows.train import pretrain_flow

    path = catalog_file(world, tmp_path_factory.mktemp("trainflow"))
    [result] = pretrain_flow(str(path))
    assert result["status"] == "done"
    return path


def test_pretrain_flow_outputs_metrics_and_artifacts(pretrained):
    run = load_catalog(pretrained).run
    out = run.stage_dir("pretrain")
    stats = read_marker(out / "final")["stats"]
    assert (stats["steps"], stats["world"], stats["nan_steps"]) == (3, 1, 0)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"):
        assert (out / "final" / name).exists(), name
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-0000002", "step-0000003"]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(set(r) == METRIC_FIELDS for r in rows)
    assert all(r["total_steps"] == 3 and not r["skipped"] and r["tokens"] > 0 for r in rows)
    assert set(rows[0]["distill_blocks"]) == {"1", "2"}  # block-wise: every teacher block (depth 2)
    assert sum(r["tokens"] for r in rows) == stats["tokens"]

    [table] = artifacts("trainflow-pretrain")
    [row] = table.data if isinstance(table.data, list) else json.loads(table.data)
    assert (row["unit"], row["done"], row["steps"], row["tokens"]) == ("pretrain", True, 3, stats["tokens"])
    assert row["final_loss"] == round(rows[-1]["loss"], 4) and row["tokens_per_s"] > 0
    [curve] = artifacts("trainflow-pretrain-loss")
    assert "data:image/png;base64," in curve.data and str(out / "loss.png") in curve.data
    progress = artifacts("trainflow-pretrain-steps")
    assert max(a.data for a in progress) == 100.0  # followed metrics.jsonl to the last step


def test_merge_then_finetune_then_generate(pretrained):
    """What pretrain writes, merge reads; what merge writes, finetune reads; what finetune writes,
    evaluate and chat load."""
    from flows.train import finetune_flow
    from vora_core.eval.chat import generate
    from vora_core.eval.runner import model_dir
    from vora_core.model.modeling import load_vora
    from vora_core.stages import run_stage

    catalog = load_catalog(pretrained)
    [merged] = run_stage("merge", catalog)
    assert merged["status"] == "done" and merged["max_abs_logit_diff"] <= 1e-5
    assert merged["source"] == str(catalog.run.stage_dir("pretrain") / "final")

    [result] = finetune_flow(str(pretrained))
    assert result["status"] == "done"
    final = model_dir(catalog)
    assert final == catalog.run.stage_dir("finetune") / "final"
    stats = read_marker(final)["stats"]
    assert (stats["steps"], stats["nan_steps"]) == (2, 0)
    rows = [json.loads(line) for line in (catalog.run.stage_dir("finetune") / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["distill"] is None for r in rows)

    model = load_vora(final)
    assert model.teacher is None and model.aux_heads is None
    assert model.config.lora_rank == 0 and not any("lora_" in n for n, _ in model.named_parameters())
    # Finetune trained every LLM weight: the embedding table moved away from the merged model's.
    base = load_vora(catalog.run.stage_dir("merge"))
    assert not model.llm.get_input_embeddings().weight.equal(base.llm.get_input_embeddings().weight)

    from PIL import Image

    image = Image.new("RGB", (40, 24), (220, 40, 40))
    answer = generate(str(final), "What colour is the shape?", [image], max_new_tokens=4)
    assert isinstance(answer, str)
    assert generate(str(final), "What colour is the shape?", [image], max_new_tokens=4) == answer  # greedy
