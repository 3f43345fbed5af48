"""Prompt choice, the Qwen2-VL chat prompt, caption cleaning and quality flags, catalog settings."""

from collections import Counter
from pathlib import Path

import pytest

from vora_core.caption.prompts import chat_prompt, choose_prompt, sample_seed
from vora_core.caption.quality import assess, clean_text, repeated_ngram_ratio
from vora_core.catalog import (
    DEFAULT_CAPTION_PROMPTS,
    CaptionQualitySettings,
    load_catalog,
    parse_catalog,
)
from vora_core.errors import CatalogError

ROOT = Path(__file__).resolve().parents[2]


def test_prompt_choice_is_deterministic_and_varied():
    prompts = ["a", "b", "c", "d"]
    chosen = [choose_prompt(prompts, 0, f"shapes/{i:09d}") for i in range(400)]
    assert chosen == [choose_prompt(prompts, 0, f"shapes/{i:09d}") for i in range(400)]
    counts = Counter(chosen)
    assert set(counts) == set(prompts) and min(counts.values()) > 60  # every prompt is used, about evenly
    other_seed = [choose_prompt(prompts, 1, f"shapes/{i:09d}") for i in range(400)]
    assert other_seed != chosen
    assert sample_seed(0, "x") == sample_seed(0, "x") != sample_seed(0, "y")
    assert 0 <= sample_seed(7, "x") < 2**31


def test_chat_prompt_is_qwen2_vl_template():
    assert chat_prompt("Describe.", "You are a helpful assistant.", 1) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert chat_prompt("Hi", None, 3) == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|image_pad|><|image_pad|><|vision_end|>Hi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_clean_text_removes_invalid_utf8_and_control_characters():
    broken = b"a red \xffcircle".decode("utf-8", errors="surrogateescape")  # lone surrogate U+DCFF
    assert clean_text(broken) == ("a red circle", True)
    assert clean_text("a\x00b\x1b[31mc\x7f") == ("ab[31mc", True)
    assert clean_text("two\ufffd dogs\u200b") == ("two dogs", True)
    assert clean_text("line one\n\tline two") == ("line one\n\tline two", False)
    assert clean_text("family 👨\u200d👩\u200d👧 ok") == ("family 👨\u200d👩\u200d👧 ok", False)
    assert clean_text("  padded  ") == ("padded", False)
    assert clean_text("x\ufffey") == ("xy", True)  # a non-character


def test_repetition_ratio():
    assert repeated_ngram_ratio("a b c d e f", 3) == 0.0
    assert repeated_ngram_ratio("the cat the cat the cat the cat", 2) == pytest.approx(1 - 2 / 7)
    assert repeated_ngram_ratio("one two", 3) == 0.0


def test_assess_flags():
    q = CaptionQualitySettings()
    assert assess("A red circle on a blue square.", "stop", q) == ("A red circle on a blue square.", [])
    assert assess("", "stop", q) == ("", ["empty"])
    assert assess("\x00\x01", "length", q) == ("", ["invalid_text", "empty", "truncated"])
    loop = "a red circle and " * 10
    assert assess(loop, "length", q) == (loop.strip(), ["truncated", "repetitive"])
    assert assess("a a a a", "stop", q) == ("a a a a", [])  # too short to call repetitive
    assert assess(None, "stop", q) == ("", ["empty"])


@pytest.mark.parametrize("name", ["demo", "vora-7b"])
def test_shipped_catalogs_have_a_recaption_section(name):
    cat = load_catalog(ROOT / "catalogs" / f"{name}.yaml")
    assert cat.recaption.prompts and all(p.strip() for p in cat.recaption.prompts)
    if name == "demo":
        assert (cat.recaption.engine, cat.recaption.model) == ("hf", "tiny")
    else:
        assert cat.recaption.model == "Qwen/Qwen2-VL-72B-Instruct"
        assert cat.recaption.vllm.tensor_parallel_size == 8


def test_recaption_defaults_and_errors():
    base = {"name": "t", "workdir": "/tmp/t", "sources": {"s": {"kind": "synthetic_shapes"}}}
    cat = parse_catalog(base)
    assert cat.recaption.prompts == DEFAULT_CAPTION_PROMPTS and cat.recaption.engine == "hf"
    with pytest.raises(CatalogError) as e:
        parse_catalog({**base, "recaption": {"engine": "vllm", "max_pixels": 8_000_000}})
    assert "recaption: max_pixels (8000000) allows 10204 image tokens; with max_new_tokens (256) that exceeds " \
           "vllm.max_model_len (8192): lower max_pixels or raise vllm.max_model_len" in str(e.value)
    with pytest.raises(CatalogError, match=r"recaption.engine: Input should be 'hf', 'openai' or 'vllm'"):
        parse_catalog({**base, "recaption": {"engine": "tgi"}})
    with pytest.raises(CatalogError, match=r"recaption.openai.concurrency: Input should be greater than 0"):
        parse_catalog({**base, "recaption": {"openai": {"concurrency": 0}}})
    with pytest.raises(CatalogError, match=r"recaption: prompts must not hold empty strings"):
        parse_catalog({**base, "recaption": {"prompts": ["ok", " "]}})
