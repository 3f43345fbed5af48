"""Packing plans, packed rows (doc ids, restarting positions), the sample index and the loader position."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from train_world import vora_config

from vora_core.train.loader import EpochPlans, PackDataset, build_loader
from vora_core.train.packing import collate, pack_first_fit, plan_epoch, positions_from_docs, rank_packs
from vora_core.train.samples import SampleBuilder, build_index, open_index
from vora_core.train.sequences import IGNORE


@pytest.fixture(scope="module")
def built(world, tokenizer, tmp_path_factory):
    config, _ = vora_config(world, "square")
    builder = SampleBuilder(tokenizer, config, "square", 160)
    path = tmp_path_factory.mktemp("index") / "samples.arrow"
    stats = build_index(world.mixture, world.run, builder, path)
    return builder, path, stats


def test_first_fit_places_every_sample_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, size=500)
    order = rng.permutation(500)
    packs = pack_first_fit(lengths, order, 128)
    flat = [i for p in packs for i in p]
    assert sorted(flat) == list(range(500))
    assert all(lengths[list(p)].sum() <= 128 for p in packs)
    fill = lengths.sum() / (len(packs) * 128)
    assert fill > 0.9  # nearly full rows
    assert plan_epoch(lengths, 128, True, 3, 0) == plan_epoch(lengths, 128, True, 3, 0)
    assert plan_epoch(lengths, 128, True, 3, 0) != plan_epoch(lengths, 128, True, 3, 1)
    assert sorted(p[0] for p in plan_epoch(lengths, 128, False, 3, 0)) == list(range(500))


def test_ranks_get_disjoint_equal_shares():
    packs = [(i,) for i in range(103)]
    shares = [rank_packs(packs, r, 3, rows_per_step=4) for r in range(3)]
    assert [len(s) for s in shares] == [32, 32, 32]  # 103 cut to 96 = 8 steps × 4 rows × 3 ranks
    flat = [p for s in shares for p in s]
    assert len(set(flat)) == 96


def test_index_stats_and_skips(world, tokenizer, tmp_path, built):
    builder, path, stats = built
    assert stats["samples"] == stats["kept"] == world.n_samples
    assert stats["kept_by_kind"] == {"caption": 16, "text": 16, "vqa": 16}
    table = open_index(path)
    assert stats["tokens"] == sum(table.column("length").to_pylist())
    assert max(table.column("length").to_pylist()) <= 160
    # A mixture with bad rows: each is counted with its reason, the good row is kept.
    good = {"role": "assistant", "content": "Fine."}
    rows = [
        {"sample_id": "a", "kind": "vqa", "image": "shapes/nope", "weight_source": "x",
         "messages": [{"role": "user", "content": "<image>\nHi"}, good]},
        {"sample_id": "b", "kind": "vqa", "image": "shapes/000000001", "weight_source": "x",
         "messages": [{"role": "user", "content": "<image><image>\nHi"}, good]},
        {"sample_id": "c", "kind": "text", "image": None, "weight_source": "x",
         "messages": [{"role": "user", "content": "Hi"}]},
        {"sample_id": "d", "kind": "vqa", "image": "shapes/000000001", "weight_source": "x",
         "messages": [{"role": "user", "content": "<image>\nHi"}, good]},
    ]
    (tmp_path / "mix").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mix" / "part-00000.parquet")
    bad = build_index(tmp_path / "mix", world.run, builder, tmp_path / "bad.arrow")
    assert bad["kept"] == 1 and bad["skipped"] == 3
    assert bad["skipped_by_reason"] == {"image_count_mismatch": 1, "image_missing": 1, "no_assistant_turn": 1}
    assert open_index(tmp_path / "bad.arrow").column("sample_id").to_pylist() == ["d"]


def test_packed_row_boundaries(built, tokenizer):
    builder, path, _ = built
    table = open_index(path)
    with_image = [i for i, n in enumerate(table.column("images").to_pylist()) if n][:2]
    text = [i for i, n in enumerate(table.column("images").to_pylist()) if not n][:1]
    pack = (with_image[0], text[0], with_image[1])
    ds = PackDataset(path, builder)
    row = ds[(0, 7, pack)]
    lengths = [table.column("length")[i].as_py() for i in pack]
    assert row.doc_ids.tolist() == [0] * lengths[0] + [1] * lengths[1] + [2] * lengths[2]
    assert len(row.pixel_values) == 2 and row.samples == 3 and row.position == (0, 7)
    # Each document is the sample built alone.
    start = 0
    for i, n in zip(pack, lengths, strict=True):
        messages = json.loads(table.column("messages")[i].as_py())
        h, w = table.column("height")[i].as_py(), table.column("width")[i].as_py()
        alone = builder.tokens(messages, [(h, w)] if h is not None else [])
        assert row.input_ids[start:start + n].tolist() == alone.input_ids.tolist()
        assert row.labels[start:start + n].tolist() == alone.labels.tolist()
        start += n
    short = ds[(0, 8, (text[0],))]
    batch = collate([row, short], pad_id=tokenizer.pad_token_id)
    width = len(row.input_ids)
    assert batch["input_ids"].shape == (2, width)
    pos = batch["position_ids"][0].tolist()
    assert pos[:lengths[0]] == list(range(lengths[0]))  # restart at each document
    assert pos[lengths[0]:lengths[0] + lengths[1]] == list(range(lengths[1]))
    pad = width - len(short.input_ids)
    assert batch["doc_ids"][1, -pad:].tolist() == [-1] * pad
    assert batch["labels"][1, -pad:].tolist() == [IGNORE] * pad
    assert batch["counts"]["labels"] == sum(table.column("labels")[i].as_py() for i in pack) + \
        table.column("labels")[text[0]].as_py()
    assert batch["counts"]["vision_tokens"] == 2 * 16
    assert batch["counts"]["slots"] - batch["counts"]["tokens"] == pad
    # Positions equal the model's own rule for packed rows.
    from vora_core.model.masks import positions_from_doc_ids

    assert torch.equal(positions_from_docs(batch["doc_ids"]), positions_from_doc_ids(batch["doc_ids"]))


def test_padding_fraction_packing_vs_padding(built):
    builder, path, _ = built
    lengths = open_index(path).column("length").to_numpy()
    ds = PackDataset(path, builder)

    def fraction(packing: bool) -> tuple[float, EpochPlans]:
        plans = EpochPlans(lengths, 480, packing, 0, 0, 1, rows_per_step=2)  # rows of 480: ~5 samples each
        it = iter(build_loader(ds, plans, (0, 0), 2, 0, pad_id=0))
        counts = [next(it)["counts"] for _ in range(plans.steps_per_epoch())]
        return 1 - sum(c["tokens"] for c in counts) / sum(c["slots"] for c in counts), plans

    (packed, _), (padded, plans) = fraction(True), fraction(False)
    assert packed < padded
    # Padding mode: each micro-batch of 2 samples is padded to its longer one.
    pairs = np.asarray([p[0] for p in plans(0)]).reshape(-1, 2)
    expected = 1 - lengths[pairs].sum() / (2 * lengths[pairs].max(1)).sum()
    assert padded == pytest.approx(expected)


def test_loader_resumes_at_its_position(built):
    builder, path, _ = built
    lengths = open_index(path).column("length").to_numpy()
    ds = PackDataset(path, builder)
    plans = EpochPlans(lengths, 160, True, 0, 0, 1, rows_per_step=2)
    per_epoch = len(plans(0))

    def take(start, n, workers):
        it = iter(build_loader(ds, plans, start, 2, workers, pad_id=0))
        return [next(it) for _ in range(n)]

    full = take((0, 0), per_epoch // 2 + 2, 0)  # runs into epoch 1
    tail = take((0, 4), per_epoch // 2, 2)  # two workers, from the 5th row
    for a, b in zip(full[2:], tail, strict=True):
        assert a["positions"] == b["positions"]
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
        assert all(torch.equal(x, y) for x, y in zip(a["pixel_values"], b["pixel_values"], strict=True))
    assert full[-1]["positions"][-1][0] == 1  # the sampler moved on to epoch 1
