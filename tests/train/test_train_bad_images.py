"""Defence in depth: an image damaged on disk after the mix stage costs its samples, counted in
metrics.jsonl, never the run — unless more than `max_skipped_share` of the samples are lost."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_train_runs import make_spec
from train_world import make_world

from vora_core.data.shards import index_path
from vora_core.train.launch import TrainingFailed, launch
from vora_core.train.metrics import read_metrics
from vora_core.train.samples import open_index

pytestmark = pytest.mark.slow
DAMAGED = ("000000003", "000000011")


@pytest.fixture(scope="module")
def damaged_world(tmp_path_factory):
    world = make_world(tmp_path_factory.mktemp("damaged-world"))
    tar = world.run.shards("shapes") / "00000.tar"
    index = pq.read_table(index_path(tar)).to_pylist()
    with open(tar, "r+b") as f:  # overwrite the PNG signatures in place: the tar and its index stay valid
        for entry in index:
            if entry["key"] in DAMAGED and entry["ext"] == "png":
                f.seek(entry["offset"])
                f.write(b"GARBAGE!")
    return world


def test_samples_with_a_broken_image_are_skipped_and_counted(damaged_world, tmp_path):
    spec = make_spec(damaged_world, tmp_path / "run", steps=6, max_skipped_share=0.5)
    spec.extra["trace_data"] = True
    launch(spec)
    rows = read_metrics(spec.metrics)
    assert [r["step"] for r in rows] == list(range(1, 7))
    index = open_index(spec.index).to_pydict()
    trained = [i for line in (Path(spec.out_dir) / "data_trace" / "rank-0.jsonl").read_text().splitlines()
               for i in json.loads(line)["samples"]]
    broken = sum(1 for i in trained if index["key"][i] in DAMAGED)
    assert broken > 0  # the draw reaches the damaged images in 6 steps (seed 0)
    assert sum(r["skipped_images"] for r in rows) == rows[-1]["skipped_images_total"] == broken
    assert sum(r["samples"] for r in rows) == len(trained) - broken
    assert spec.final.exists()


def test_too_many_skipped_samples_stop_the_run(damaged_world, tmp_path):
    spec = make_spec(damaged_world, tmp_path / "run", steps=6, max_skipped_share=0.01)
    with pytest.raises(TrainingFailed) as e:
        launch(spec)
    message = str(e.value)
    assert "samples skipped because their image failed to load" in message
    assert "more than max_skipped_share 0.01 of the 48 samples per epoch" in message
    assert "raise pretrain.max_skipped_share" in message
    assert not spec.final.exists()
