"""The lmms-eval adapter: its request logic always; the class itself only where lmms-eval is installed."""

from __future__ import annotations

import importlib.util

import pytest
from PIL import Image

from vora_core.eval import chat, lmms_adapter, runner


@pytest.fixture(scope="module")
def loaded(tiny_eval):
    return runner.load_model(tiny_eval["vora"])


def test_answers_match_chat_and_respect_until(loaded):
    red = Image.new("RGB", (32, 20), (220, 30, 30))
    items = [("What colour is it?", {"max_new_tokens": 6}, [red]),
             ("Two plus two?", {"max_new_tokens": 6, "until": ["\n\n"]}, []),
             ("Compare <image> and <image>.", {"max_new_tokens": 4}, [red, red])]
    answers = lmms_adapter.answer_requests(loaded, items, batch_size=2)
    expected = [chat.generate(loaded, q, v, max_new_tokens=kw["max_new_tokens"]) for q, kw, v in items]
    assert answers == expected
    first = answers[0]
    assert first and lmms_adapter.answer_requests(loaded, [(items[0][0], {"max_new_tokens": 6, "until": [first[1:]]},
                                                            [red])]) == [first[:1]]


def test_greedy_continuation_is_recognised(loaded):
    red = Image.new("RGB", (24, 24), (220, 30, 30))
    enc = loaded.encoder.encode(chat.user_text("What colour is it?", 1), [red])
    tokens = list(chat.iter_tokens(loaded.model, enc.input_ids, enc.pixel_values, 4, loaded.encoder.stop_ids()))
    # The longest greedy prefix whose text encodes back to the same tokens (byte-level BPE can split a
    # character over tokens, and a lone byte does not round-trip).
    prefix = max((tokens[:k] for k in range(1, len(tokens) + 1)
                  if loaded.tokenizer.encode(loaded.tokenizer.decode(tokens[:k]), add_special_tokens=False)
                  == tokens[:k]), key=len)
    text = loaded.tokenizer.decode(prefix)
    logprob, is_greedy = lmms_adapter.continuation_logprob(loaded, "What colour is it?", text, [red])
    assert is_greedy and logprob < 0
    _, other = lmms_adapter.continuation_logprob(loaded, "What colour is it?", text + " zebra zebra", [red])
    assert other is False


@pytest.mark.skipif(importlib.util.find_spec("lmms_eval") is None,
                    reason="lmms-eval is not installed (optional extra `eval`)")
def test_lmms_eval_class(tiny_eval):
    from lmms_eval.api.instance import Instance

    cls = lmms_adapter.lmms_class()
    model = cls(pretrained=str(tiny_eval["vora"]), batch_size=2, max_new_tokens=4)
    image = Image.new("RGB", (24, 24), (30, 30, 220))
    model.task_dict = {"toy": {"test": {0: {"image": image}}}}
    req = Instance(request_type="generate_until", doc={}, idx=0,
                   arguments=("What colour?", {"max_new_tokens": 4}, lambda d: [d["image"]], 0, "toy", "test"))
    assert model.generate_until([req]) == [chat.generate(model.loaded, "What colour?", [image], max_new_tokens=4)]
