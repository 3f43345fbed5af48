"""The tiny LLM's reading practice (vora_core.train.reading) and its catalog switch."""

from __future__ import annotations

import random
import shutil

import torch
from safetensors.torch import load_file

from vora_core.catalog import load_catalog
from vora_core.train.reading import KINDS, QUERIES, practise_reading, reading, reading_batch


def test_reading_texts_answer_what_the_scene_says():
    scene, asked = reading(random.Random(3))
    colour, shape = scene.removeprefix("The shape is a ").removesuffix(".").split(" ")
    assert len(asked) == QUERIES and {k for _, _, k in asked} <= set(KINDS)
    for question, answer, kind in asked:
        assert question.endswith(" ")  # the answer is one token after it
        if kind == "yesno":
            assert answer == ("yes" if question.split()[-1].rstrip("?") in (colour, shape) else "no")
        elif kind == "options":
            listed = question.strip().removesuffix(" Answer:").split(" ")  # A. red B. blue C. ... D. ...
            letters = {listed[i].rstrip("."): listed[i + 1] for i in range(0, len(listed), 2)}
            assert sorted(letters) == ["A", "B", "C", "D"] and letters[answer] in (colour, shape)
        else:
            assert answer == (colour if "colour" in question else shape)


def test_batch_labels_only_the_answers(tiny):
    ids, labels, kinds = reading_batch(tiny.tokenizer, random.Random(0), 3)
    assert ids.shape == labels.shape == kinds.shape
    assert ((labels != -100).sum(1) == QUERIES).all()
    assert torch.equal(labels != -100, kinds >= 0)
    assert torch.equal(labels[labels != -100], ids[labels != -100])


def test_practice_trains_the_llm_in_place(tiny, tmp_path):
    llm = shutil.copytree(tiny.llm_dir, tmp_path / "llm")
    before = load_file(llm / "model.safetensors")
    progress = []
    stats = practise_reading(llm, steps=3, lr=1e-3, batch=4, log_every=2, on_step=lambda *p: progress.append(p))
    assert progress == [(2, 3), (3, 3)]
    after = load_file(llm / "model.safetensors")
    assert stats["reading_steps"] == 3
    assert set(stats["accuracy_before"]) == set(stats["accuracy_after"]) == set(KINDS)
    assert not torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])


def test_no_reading_keeps_the_earlier_settings_dump():
    """Without reading practice the tiny settings dump as before the fields existed: earlier runs'
    fingerprints (tiny models, pretraining) still match."""
    tiny = load_catalog("catalogs/demo.yaml").model.tiny
    assert "llm_reading_steps" not in tiny.model_dump() and "llm_reading_lr" not in tiny.model_dump(mode="json")
    reading_on = tiny.model_copy(update={"llm_reading_steps": 300})
    assert reading_on.model_dump()["llm_reading_steps"] == 300 and reading_on.model_dump()["llm_reading_lr"] == 3e-4
