"""The demo's tiny teacher pretraining: it learns its pictures' labels, keeps the tower's shape, and
needs a synthetic source to draw like."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from vora_core.catalog import SyntheticShapesSource, parse_catalog
from vora_core.errors import CatalogError
from vora_core.model.tiny import build_tiny_teacher
from vora_core.train.teacher import LABELS, pretrain_teacher, shape_pictures


def test_pictures_are_square_transform_inputs_with_labels():
    src = SyntheticShapesSource(kind="synthetic_shapes", min_side=40, max_side=56)
    pixels, labels = shape_pictures(src, 6, 28, [0.5, 0.5, 0.5], seed=3)
    assert pixels.shape == (6, 3, 28, 28) and pixels.dtype == torch.uint8
    assert labels.shape == (6, 4)
    for k, names in enumerate(LABELS.values()):
        assert 0 <= int(labels[:, k].min()) and int(labels[:, k].max()) < len(names)
    again, same = shape_pictures(src, 6, 28, [0.5, 0.5, 0.5], seed=3)
    assert torch.equal(pixels, again) and torch.equal(labels, same)


def test_pretraining_learns_the_colours_and_saves_the_tower(tmp_path):
    torch.manual_seed(0)
    path = build_tiny_teacher(tmp_path / "t", image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=1,
                              num_attention_heads=2, intermediate_size=64)
    before = load_file(path / "model.safetensors")
    src = SyntheticShapesSource(kind="synthetic_shapes", min_side=40, max_side=56, shape_scale=1.5)
    epochs = []
    stats = pretrain_teacher(path, src, images=512, epochs=4, lr=3e-3, on_epoch=lambda *e: epochs.append(e))
    assert epochs == [(1, 4), (2, 4), (3, 4), (4, 4)]
    after = load_file(path / "model.safetensors")
    assert before.keys() == after.keys()  # the heads are not saved
    assert all(before[k].shape == after[k].shape for k in before)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert set(stats["validation_accuracy"]) == set(LABELS) and stats["images"] == 512
    # the background fills most of a 2x2-patch picture: far above chance (0.25) after 32 steps
    assert stats["validation_accuracy"]["background"] >= 0.6
    assert json.loads((path / "config.json").read_text())["hidden_size"] == 32


def test_teacher_pretraining_needs_a_synthetic_source():
    with pytest.raises(CatalogError, match="model.tiny.teacher_pretrain_images: pretraining the tiny teacher "
                                           "draws pictures like a synthetic_shapes source's"):
        parse_catalog({"name": "x", "workdir": "w", "sources": {"a": {"kind": "url_list", "path": "u.parquet"}},
                       "model": {"tiny": {"teacher_pretrain_images": 100}}})
