"""Tiny models shared by the model tests: built once per session from configs (no downloads)."""

from __future__ import annotations

import pytest
from model_helpers import TEXTS, Tiny


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Tiny:
    from vora_core.model.tiny import build_tiny_llm, build_tiny_teacher, train_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    llm_dir = build_tiny_llm(root / "llm", tokenizer, hidden_size=64, num_hidden_layers=3, seed=0)
    teacher_dir = build_tiny_teacher(root / "teacher", image_size=32, patch_size=8, num_hidden_layers=2, seed=1)
    return Tiny(tokenizer, llm_dir, teacher_dir, tokenizer.convert_tokens_to_ids("<|image_pad|>"))
