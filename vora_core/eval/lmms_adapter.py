"""An lmms-eval model class for our HF directories (optional extra `eval`: `pip install '.[eval]'`).

    from vora_core.eval.lmms_adapter import lmms_class
    from lmms_eval.evaluator import simple_evaluate
    VoRA = lmms_class()
    simple_evaluate(model=VoRA(pretrained="runs/demo/finetune/final"), tasks=["mme", "pope"])

or, for lmms-eval's command line, `register()` adds the class under the name "vora" to its model
registry (call it from a plugin module, then `--model vora --model_args pretrained=DIR`).

lmms-eval hands over "simple" requests: `args = (context, gen_kwargs | doc_to_target, doc_to_visual,
doc_id, task, split)`; the images are `doc_to_visual(task_dict[task][split][doc_id])`. The request
logic lives in plain functions (`answer_requests`, `continuation_logprob`) that work without
lmms-eval installed, so the adapter's behaviour is tested here; only the thin class needs lmms-eval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from vora_core.eval.chat import user_text
from vora_core.eval.prompts import Encoded, left_pad
from vora_core.eval.runner import Loaded, generate_batch, load_model


def _encode(loaded: Loaded, context: str, visuals: Sequence[Image.Image]) -> Encoded:
    images = [v.convert("RGB") for v in visuals if isinstance(v, Image.Image)]
    return loaded.encoder.encode(user_text(context, len(images)), images)


def _cut(text: str, until: Sequence[str]) -> str:
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def answer_requests(loaded: Loaded, items: Sequence[tuple[str, dict, Sequence[Image.Image]]],
                    batch_size: int = 8, default_max_new_tokens: int = 128) -> list[str]:
    """Greedy answers to (context, gen_kwargs, images) items, in order. Items with the same generation
    settings are batched; `until` strings cut the answer, `max_new_tokens` bounds it."""
    answers: list[str | None] = [None] * len(items)
    groups: dict[tuple, list[int]] = {}
    for i, (_, kwargs, _) in enumerate(items):
        groups.setdefault((int(kwargs.get("max_new_tokens", default_max_new_tokens)),), []).append(i)
    for (max_new,), idx in groups.items():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            encoded = [_encode(loaded, items[i][0], items[i][2]) for i in chunk]
            for i, text in zip(chunk, generate_batch(loaded, encoded, max_new), strict=True):
                until = items[i][1].get("until") or []
                answers[i] = _cut(text, [until] if isinstance(until, str) else until)
    return [a or "" for a in answers]


@torch.no_grad()
def continuation_logprob(loaded: Loaded, context: str, continuation: str,
                         visuals: Sequence[Image.Image]) -> tuple[float, bool]:
    """log P(continuation | prompt) as the assistant's answer, and whether greedy decoding gives it."""
    enc = _encode(loaded, context, visuals)
    cont = loaded.tokenizer.encode(continuation, add_special_tokens=False)
    if not cont:
        return 0.0, True
    ids, mask = left_pad([enc.input_ids + cont], loaded.encoder.pad_id())
    param = next(loaded.model.parameters())
    out = loaded.model(input_ids=ids.to(param.device), attention_mask=mask.to(param.device),
                       pixel_values=[p.to(param.device, param.dtype) for p in enc.pixel_values] or None)
    logits = out.logits[0, -len(cont) - 1:-1].float().log_softmax(-1)
    target = torch.tensor(cont, device=logits.device)
    logprob = logits.gather(-1, target[:, None]).sum().item()
    return logprob, bool((logits.argmax(-1) == target).all())


def lmms_class() -> type:
    """The lmms-eval model class (needs lmms-eval: `pip install '.[eval]'`)."""
    try:
        from lmms_eval.api.model import lmms
    except ImportError as e:
        raise ImportError("lmms-eval is not installed; install the optional extra: pip install '.[eval]'") from e

    class VoRALMMs(lmms):
        """`pretrained`: a VoRA model directory (merged/, finetune/final/ ...)."""

        def __init__(self, pretrained: str, batch_size: int | str = 8, device: str = "auto", dtype: str = "auto",
                     max_new_tokens: int = 128, **kwargs: Any) -> None:
            self.pretrained = str(pretrained)
            super().__init__()
            self.loaded = load_model(pretrained, dtype, device)
            self.batch_size_per_gpu = int(batch_size)
            self.max_new_tokens = int(max_new_tokens)

        def _visuals(self, doc_to_visual, doc_id, task, split) -> list[Image.Image]:
            visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
            return [v for v in (visuals or []) if isinstance(v, Image.Image)]

        def generate_until(self, requests) -> list[str]:
            items = [(ctx, dict(kwargs or {}), self._visuals(dtv, doc_id, task, split))
                     for ctx, kwargs, dtv, doc_id, task, split in (r.args for r in requests)]
            return answer_requests(self.loaded, items, self.batch_size_per_gpu, self.max_new_tokens)

        def loglikelihood(self, requests) -> list[tuple[float, bool]]:
            results = []
            for ctx, doc_to_target, dtv, doc_id, task, split in (r.args for r in requests):
                doc = self.task_dict[task][split][doc_id]
                target = doc_to_target(doc) if callable(doc_to_target) else doc_to_target
                results.append(continuation_logprob(self.loaded, ctx, str(target),
                                                    self._visuals(dtv, doc_id, task, split)))
            return results

        def generate_until_multi_round(self, requests) -> list[str]:
            raise NotImplementedError("multi-round generation is not supported by the VoRA adapter")

    return VoRALMMs


def register(name: str = "vora") -> type:
    """Add the class to lmms-eval's model registry under `name` and return it."""
    from lmms_eval.api.registry import register_model

    return register_model(name)(lmms_class())
