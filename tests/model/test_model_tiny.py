"""Tiny models: tokenizer with Qwen's chat tokens, seeded LLM/teacher, a runnable Qwen2-VL captioner."""

from __future__ import annotations

import time

import torch
from model_helpers import TEXTS
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForCausalLM, AutoTokenizer

from vora_core.model.tiny import SPECIAL_TOKENS, build_tiny_captioner, build_tiny_llm, train_tokenizer


def test_tokenizer_trains_fast_with_chat_tokens_and_template(tiny, tmp_path):
    start = time.perf_counter()
    tokenizer = train_tokenizer(TEXTS * 20, vocab_size=500)
    assert time.perf_counter() - start < 10
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == list(range(7))
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    text = "The red square <image> sits at the top left."
    assert loaded.decode(loaded(text)["input_ids"]) == text
    chat = loaded.apply_chat_template(
        [{"role": "user", "content": "<image>\nWhat is this?"}, {"role": "assistant", "content": "A red square."}],
        tokenize=False,
    )
    assert chat == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\n<image>\nWhat is this?<|im_end|>\n"
                    "<|im_start|>assistant\nA red square.<|im_end|>\n")
    ids = loaded("<|im_start|>user\n<|image_pad|><|im_end|>")["input_ids"]
    assert ids[0] == 1 and 5 in ids and ids[-1] == 2  # special tokens stay single ids


def test_tiny_llm_is_seeded(tiny, tmp_path):
    again = build_tiny_llm(tmp_path / "llm", tiny.tokenizer, hidden_size=64, num_hidden_layers=3, seed=0)
    a = AutoModelForCausalLM.from_pretrained(str(tiny.llm_dir)).state_dict()
    b = AutoModelForCausalLM.from_pretrained(str(again)).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tiny_captioner_loads_and_generates_without_a_processor(tiny, tmp_path):
    path = build_tiny_captioner(tmp_path / "captioner", tiny.tokenizer)
    from transformers import Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(str(path)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    images = AutoImageProcessor.from_pretrained(str(path))
    batch = images(images=[Image.new("RGB", (64, 48), (0, 0, 255))], return_tensors="pt")
    merge = images.merge_size**2
    n_tokens = int(batch["image_grid_thw"].prod()) // merge
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}],
        tokenize=False, add_generation_prompt=True,
    ).replace("<|image_pad|>", "<|image_pad|>" * n_tokens)
    inputs = tokenizer(prompt, return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == n_tokens
    out = model.generate(**inputs, pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                         max_new_tokens=3, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 3)
