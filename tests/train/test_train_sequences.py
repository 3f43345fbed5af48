"""Sequence building: chat template, label masks, <image> expansion, truncation rules."""

from __future__ import annotations

import numpy as np
import pytest

from vora_core.train.sequences import IGNORE, ChatEncoder, SkipSample, TokenSequence, truncate


def encoder(tokenizer, system_prompt=None) -> ChatEncoder:
    return ChatEncoder(tokenizer, tokenizer.convert_tokens_to_ids("<|image_pad|>"), system_prompt)


def labelled_text(tokenizer, seq: TokenSequence) -> list[str]:
    """Each maximal run of labelled tokens, decoded."""
    runs, current = [], []
    for tok, lab in zip(seq.input_ids.tolist(), seq.labels.tolist(), strict=True):
        if lab != IGNORE:
            assert lab == tok
            current.append(tok)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(r) for r in runs]


def test_labels_system_multiturn_several_images(tokenizer):
    enc = encoder(tokenizer)
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    vs, ve = (tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>"))
    messages = [
        {"role": "system", "content": "You count."},
        {"role": "user", "content": "<image>\nWhat colour is the shape?"},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "Compare with <image> and <image>."},
        {"role": "assistant", "content": "The second one is blue and the third is green."},
    ]
    seq = enc.encode(messages, [4, 6, 2])
    assert labelled_text(tokenizer, seq) == ["Red.<|im_end|>",
                                             "The second one is blue and the third is green.<|im_end|>"]
    # Three images, each wrapped in vision start/end, runs of exactly 4, 6, 2 placeholders, never labelled.
    assert seq.num_images == 3
    for (start, end), n in zip(seq.image_spans, [4, 6, 2], strict=True):
        assert seq.input_ids[start] == vs and seq.input_ids[end - 1] == ve
        assert (seq.input_ids[start + 1:end - 1] == pad).all() and end - start == n + 2
        assert (seq.labels[start:end] == IGNORE).all()
    assert int((seq.input_ids == pad).sum()) == 12
    # The whole thing decodes back to the template's rendering with the images expanded.
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    expanded = text.replace("<image>", "<|vision_start|>{}<|vision_end|>", 3).format(
        "<|image_pad|>" * 4, "<|image_pad|>" * 6, "<|image_pad|>" * 2)
    assert tokenizer.decode(seq.input_ids.tolist()) == expanded
    # Only the system message the conversation had: no default system prompt added.
    assert tokenizer.decode(seq.input_ids.tolist()).count("<|im_start|>system") == 1


def test_system_prompt_is_configurable(tokenizer):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    default = tokenizer.decode(encoder(tokenizer).encode(messages, []).input_ids.tolist())
    custom = tokenizer.decode(encoder(tokenizer, "Be brief.").encode(messages, []).input_ids.tolist())
    assert default.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert custom.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    with_own = [{"role": "system", "content": "Own."}, *messages]
    assert tokenizer.decode(encoder(tokenizer, "Be brief.").encode(with_own, []).input_ids.tolist()).startswith(
        "<|im_start|>system\nOwn.<|im_end|>")


def test_prompt_ids_match_the_evaluator(tokenizer, world):
    """Training ids up to the answer equal what the evaluator feeds the model at inference."""
    from train_world import vora_config

    from vora_core.eval.prompts import PromptEncoder

    config, _ = vora_config(world)
    question = "<image>\nWhat colour is the shape?"
    seq = encoder(tokenizer).encode([{"role": "user", "content": question},
                                     {"role": "assistant", "content": "Blue."}], [config.base_grid ** 2])
    from PIL import Image

    prompt = PromptEncoder(tokenizer, config).encode(question, [Image.new("RGB", (32, 32))]).input_ids
    first_label = int(np.flatnonzero(seq.labels != IGNORE)[0])
    assert seq.input_ids[:first_label].tolist() == prompt


def test_truncation_never_cuts_an_image():
    ids = np.arange(20)
    labels = np.where(ids >= 2, ids, IGNORE)
    seq = TokenSequence(ids, labels, [(5, 12), (14, 18)])
    cut = truncate(seq, 9)  # 9 falls inside the first image: cut at its start
    assert len(cut) == 5 and cut.image_spans == []
    cut = truncate(seq, 16)  # inside the second image: keep the first, drop the second
    assert len(cut) == 14 and cut.image_spans == [(5, 12)]
    cut = truncate(seq, 12)  # exactly at an image's end: the image stays whole
    assert len(cut) == 12 and cut.image_spans == [(5, 12)]
    assert truncate(seq, 30) is seq


def test_skips_are_reasoned(tokenizer):
    enc = encoder(tokenizer)
    q = [{"role": "user", "content": "<image>\nDescribe."}, {"role": "assistant", "content": "A shape."}]
    with pytest.raises(SkipSample) as e:
        enc.build(q, [64], max_len=40)
    assert e.value.reason == "image_exceeds_seq_len"
    with pytest.raises(SkipSample) as e:
        enc.build(q, [], max_len=400)
    assert e.value.reason == "image_count_mismatch"
    with pytest.raises(SkipSample) as e:
        enc.build(q[:1], [4], max_len=400)
    assert e.value.reason == "no_assistant_turn"
    long_question = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    with pytest.raises(SkipSample) as e:
        enc.build(long_question, [], max_len=50)
    assert e.value.reason == "no_labels"
    ok = enc.build(q, [4], max_len=400)
    assert ok.num_labels == len(tokenizer("A shape.<|im_end|>", add_special_tokens=False)["input_ids"])
