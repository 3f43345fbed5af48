"""A generated training world (shards, mixture, tiny LLM + teacher), built once per session."""

from __future__ import annotations

import pytest
from train_world import World, make_world


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    return make_world(tmp_path_factory.mktemp("train-world"))


@pytest.fixture(scope="session")
def tokenizer(world):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(world.llm))

