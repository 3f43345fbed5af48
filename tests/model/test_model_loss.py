"""The chunked LM loss (vora_core.model.loss) equals the plain path in value and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_helpers import make_vora

from vora_core.model.loss import lm_loss_sum


def _inputs(with_bias: bool, n: int = 37, hidden: int = 16, vocab: int = 50):
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(n, hidden, generator=gen, requires_grad=True)
    w = torch.randn(vocab, hidden, generator=gen, requires_grad=True)
    b = torch.randn(vocab, generator=gen, requires_grad=True) if with_bias else None
    t = torch.randint(0, vocab, (n,), generator=gen)
    return h, w, b, t


@pytest.mark.parametrize("chunk", [1, 7, 37, 100])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_loss_and_grads_equal_plain(chunk: int, with_bias: bool) -> None:
    h, w, b, t = _inputs(with_bias)
    plain = F.cross_entropy(F.linear(h, w, b), t, reduction="sum")
    (plain * 0.3).backward()
    expected = [x.grad.clone() for x in (h, w, b) if x is not None]
    for x in (h, w, b):
        if x is not None:
            x.grad = None
    chunked = lm_loss_sum(h, w, b, t, chunk)
    (chunked * 0.3).backward()  # the incoming gradient scales the gradients computed in forward
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-4)
    for got, want in zip([x.grad for x in (h, w, b) if x is not None], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_chunked_loss_frozen_weight_and_no_grad() -> None:
    h, w, b, t = _inputs(False)
    w.requires_grad_(False)
    plain = F.cross_entropy(F.linear(h, w), t, reduction="sum")
    plain.backward()
    expected, h.grad = h.grad.clone(), None
    chunked = lm_loss_sum(h, w, None, t, 8)
    chunked.backward()
    torch.testing.assert_close(h.grad, expected, rtol=1e-5, atol=1e-6)
    assert w.grad is None
    with torch.no_grad():
        torch.testing.assert_close(lm_loss_sum(h, w, None, t, 8), plain.detach(), rtol=1e-6, atol=1e-4)


def test_chunked_loss_under_bf16_autocast_matches_plain_lm_head() -> None:
    h, w, _, t = _inputs(False, n=64, hidden=32, vocab=80)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.cross_entropy(F.linear(h, w).float(), t, reduction="sum")
    plain.backward()
    expected = [h.grad.clone(), w.grad.clone()]
    h.grad = w.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked = lm_loss_sum(h, w, None, t, 16)
    chunked.backward()
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-3)
    assert h.grad.dtype == w.grad.dtype == torch.float32
    torch.testing.assert_close(h.grad, expected[0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(w.grad, expected[1], rtol=2e-2, atol=5e-2)


def _model_grads(tiny, chunk: int, ids, docs, labels):
    model = make_vora(tiny, teacher=False, lm_loss_chunk=chunk).train()
    last_hidden = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        last_hidden["h"] = output

    model.llm.get_decoder().norm.register_forward_hook(keep)
    out = model(input_ids=ids, doc_ids=docs, labels=labels)
    out.loss.backward()
    return out.lm_loss.detach(), model.llm.get_output_embeddings().weight.grad, last_hidden["h"].grad


def test_model_lm_loss_chunked_equals_plain(tiny) -> None:
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 250, (2, 40), generator=gen)
    docs = torch.tensor([[0] * 15 + [1] * 25, [0] * 40])
    labels = ids.clone()
    labels[:, :3] = -100
    plain = _model_grads(tiny, 0, ids, docs, labels)
    chunked = _model_grads(tiny, 9, ids, docs, labels)  # 72 label positions: 8 chunks, the last one short
    torch.testing.assert_close(chunked[0], plain[0], rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(chunked[1], plain[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked[2], plain[2], rtol=1e-5, atol=1e-6)
    assert plain[2].abs().sum() > 0
