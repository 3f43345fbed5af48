"""SDPA per document (vora_core.model.document_attention): the regrouping of packed rows, and a training
step through it equal to the dense mask's (losses, gradients, logits of every real token)."""

from __future__ import annotations

import random

import torch
from model_helpers import make_vora, packed_batch, randomize_lora

from vora_core.model import document_attention


def test_documents_are_grouped_by_length_and_padding_is_left_out():
    docs = torch.tensor([[0, 0, 0, 1, 1, -1, -1, -1],
                         [2, 2, 2, 2, 2, 3, 3, 3]])
    limit = torch.tensor([[0, 2, 2, 3, 4, 5, 6, 7],      # tokens 1-2 of document 0: an image
                          [0, 1, 2, 3, 4, 5, 6, 7]])
    seg = document_attention.document_segments(docs, limit, torch.float32, "always")
    # lengths 3, 2, 5, 3: groups (2), (3, 3) and (5), each padded to its longest
    assert [(g.n, g.length) for g in seg.groups] == [(1, 2), (2, 3), (1, 5)]
    assert (seg.cells, seg.dense_cells) == (4 + 18 + 25, 128)
    assert [g.offset for g in seg.groups] == [0, 2, 8]
    assert seg.gather.tolist() == [3, 4, 0, 1, 2, 13, 14, 15, 8, 9, 10, 11, 12]
    # slots: group (2) at 0-1, group (3, 3) at 2-7, group (5) at 8-12; padding reads slot 0, and its
    # gradient the zero row, 13
    assert seg.scatter.tolist() == [2, 3, 4, 0, 1, 0, 0, 0, 8, 9, 10, 11, 12, 5, 6, 7]
    assert seg.scatter_grad.tolist() == [2, 3, 4, 0, 1, 13, 13, 13, 8, 9, 10, 11, 12, 5, 6, 7]
    assert torch.equal(seg.gather_grad, seg.gather)  # no document is padded in its group
    visible = seg.groups[1].mask[:, 0] == 0
    assert visible[0].int().tolist() == [[1, 0, 0], [1, 1, 1], [1, 1, 1]]  # text, then a two-token image
    assert visible[1].int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]  # causal text


def test_a_padded_slot_sees_its_documents_keys_only():
    docs = torch.tensor([[0, 0, 0, 0, 1, 1, 2, 2]])
    seg = document_attention.document_segments(docs, torch.arange(8)[None], torch.float32, "always")
    assert [(g.n, g.length) for g in seg.groups] == [(2, 2), (1, 4)]
    seg = document_attention.document_segments(torch.tensor([[0, 0, 0, 1, 1, 1, 1, -1]]),
                                               torch.arange(8)[None], torch.float32, "always")
    group = seg.groups[0]  # lengths 3 and 4: one group of 4; document 0's fourth slot is padding
    assert (group.n, group.length) == (2, 4)
    assert seg.gather.tolist() == [0, 1, 2, 2, 3, 4, 5, 6]
    assert seg.gather_grad.tolist() == [0, 1, 2, 8, 3, 4, 5, 6]
    assert seg.scatter_grad.tolist() == [0, 1, 2, 4, 5, 6, 7, 8]
    assert (group.mask[0, 0] == 0).int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]]


def test_no_regrouping_where_it_cannot_apply_or_would_not_pay():
    def segments(docs: torch.Tensor, mode: str):
        limit = torch.arange(docs.shape[1]).expand_as(docs)
        return document_attention.document_segments(docs, limit, torch.float32, mode)

    one_each = torch.tensor([[0] * 8, [1] * 6 + [-1] * 2])
    assert segments(one_each, "always") is None
    split = torch.tensor([[0, 0, 1, 1, 0, 0, 2, 2], [3] * 4 + [4] * 4])  # document 0 in two runs
    assert segments(split, "always") is None
    two = torch.tensor([[0] * 4 + [1] * 4])
    assert segments(two, "always").cells == 32 and segments(two, "never") is None
    # auto: 512-token rows of two documents save 256 cells per token, 2,048-token rows of eight 1,792
    assert segments(torch.arange(2).repeat_interleave(256)[None], "auto") is None
    eight = segments(torch.arange(8).repeat_interleave(256)[None], "auto")
    assert (eight.cells, eight.dense_cells) == (8 * 256 * 256, 2048 * 2048)
    # off CPU (measured on an H200) auto leaves it to the dense mask (or flex): decided before any work
    assert segments(torch.arange(8).repeat_interleave(256)[None].to("meta"), "auto") is None


def _step(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def test_a_training_step_per_document_equals_the_dense_mask(tiny, monkeypatch):
    calls = []
    attend = document_attention.DocumentSegments.attend
    monkeypatch.setattr(document_attention.DocumentSegments, "attend",
                        lambda self, *a: calls.append(len(self.groups)) or attend(self, *a))
    model = make_vora(tiny).train()  # distillation on: block inputs come through the regrouped attention
    randomize_lora(model)
    batch = packed_batch(tiny, random.Random(3), 64)
    batch["doc_ids"][1, -5:] = -1  # padding at the end of a row
    batch["labels"][1, -5:] = -100

    model.config.per_document_attention = "auto"  # 64-token rows: it would not pay
    _step(model, batch)
    assert calls == []
    model.config.per_document_attention = "never"
    dense, dense_grads = _step(model, batch)
    assert calls == []
    model.config.per_document_attention = "always"
    split, split_grads = _step(model, batch)
    assert calls and len(calls) == model.config.text_config.num_hidden_layers  # every block, once each
    torch.testing.assert_close(split.lm_loss, dense.lm_loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(split.distill_loss, dense.distill_loss, rtol=0, atol=1e-6)
    assert split_grads.keys() == dense_grads.keys() and len(dense_grads) > 10
    for name in dense_grads:
        torch.testing.assert_close(split_grads[name], dense_grads[name], rtol=1e-4, atol=1e-6, msg=name)

    real = batch["doc_ids"] >= 0
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    model.eval()
    with torch.no_grad():
        split_logits = model(**inputs).logits
        model.config.per_document_attention = "never"
        dense_logits = model(**inputs).logits
    torch.testing.assert_close(split_logits[real], dense_logits[real], rtol=0, atol=1e-5)
