"""Attention rule: causal text, bidirectional images, isolated images and documents, padding."""

from __future__ import annotations

import pytest
import torch
from model_helpers import image_run, make_vora

from vora_core.errors import ModelError
from vora_core.model import masks


def reference_allowed(doc: list[int], img: list[int], bidirectional: bool) -> torch.Tensor:
    """The DESIGN rule written literally, one pair at a time (test oracle only)."""
    n = len(doc)
    out = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for k in range(n):
            same_image = bidirectional and img[q] == img[k] and img[q] >= 0
            out[q, k] = doc[q] == doc[k] and (k <= q or same_image)
    return out


def test_dense_mask_matches_rule_on_packed_rows_with_adjacent_images_and_padding():
    # row 0: doc 0 = text, image 0, image 1 (adjacent), text; doc 1 = text, image 2, text; 2 pads
    # row 1: 3 left pads, then text, image 3, text
    image_token = 99
    row0 = [1, 2, 99, 99, 99, 99, 99, 3, 4, 5, 99, 99, 6, 0, 0]
    doc0 = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, -1, -1]
    row1 = [0, 0, 0, 7, 99, 99, 99, 8, 9, 10, 11, 12, 13, 14, 15]
    doc1 = [-1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    ids = torch.tensor([row0, row1])
    tokens_per_image = torch.tensor([3, 2, 2, 3])
    image_ids = masks.image_ids_from_input_ids(ids, image_token, tokens_per_image)
    assert image_ids.tolist() == [
        [-1, -1, 0, 0, 0, 1, 1, -1, -1, -1, 2, 2, -1, -1, -1],
        [-1, -1, -1, -1, 3, 3, 3, -1, -1, -1, -1, -1, -1, -1, -1],
    ]
    docs = torch.tensor([doc0, doc1])
    for bidirectional in (True, False):
        limit = masks.visibility_limit(image_ids, 4, bidirectional)
        mask = masks.dense_mask(docs, limit, torch.float32)
        assert mask.shape == (2, 1, 15, 15)
        for b in range(2):
            expected = reference_allowed(docs[b].tolist(), image_ids[b].tolist(), bidirectional)
            assert torch.equal(mask[b, 0] == 0, expected)
            assert set(mask[b, 0].unique().tolist()) == {0.0, torch.finfo(torch.float32).min}
    # image 0's first token sees image 0's last token, never image 1 (adjacent, later)
    limit = masks.visibility_limit(image_ids, 4, True)
    assert limit[0, 2].item() == 4 and limit[0, 5].item() == 6 and limit[0, 7].item() == 7


def test_cached_decoding_mask_covers_only_new_queries():
    docs = torch.tensor([[-1, 0, 0, 0, 0]])
    limit = torch.tensor([[4]])
    mask = masks.dense_mask(docs, limit, torch.float32)
    assert mask.shape == (1, 1, 1, 5)
    assert (mask[0, 0, 0] == 0).tolist() == [False, True, True, True, True]


def test_positions_restart_per_document():
    docs = torch.tensor([[0, 0, 0, 1, 1, 2], [-1, -1, 0, 0, 0, 0]])
    assert masks.positions_from_doc_ids(docs).tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 0, 1, 2, 3]]


def test_mismatched_placeholder_count_is_a_clear_error(tiny):
    model = make_vora(tiny, teacher=False)
    ids = torch.tensor([[10, *image_run(tiny, 15), 11]])
    with pytest.raises(ModelError, match="^input_ids hold 15 image placeholder tokens but the images give 16 "
                                         "vision tokens; expand each <image> by num_image_tokens"):
        model(input_ids=ids, pixel_values=[torch.randn(3, 32, 32)])


def _logits(model, ids, pixels=None, **kw):
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=pixels, **kw).logits


def test_text_is_causal(tiny):
    model = make_vora(tiny, teacher=False)
    ids = torch.tensor([[10, 11, 12, 13, 14, 15]])
    changed = ids.clone()
    changed[0, 4] = 20
    a, b = _logits(model, ids), _logits(model, changed)
    assert torch.equal(a[0, :4], b[0, :4])
    assert not torch.allclose(a[0, 4:], b[0, 4:])


def test_image_tokens_see_their_whole_image_but_not_later_text(tiny):
    model = make_vora(tiny, teacher=False)
    ids = torch.tensor([[10, 11, *image_run(tiny, 16), 12, 13]])
    pixels = torch.randn(1, 3, 32, 32)
    later_patch = pixels.clone()
    later_patch[:, :, 24:, 24:] += 1.0  # the image's last patch (token 15 of 16)
    base = _logits(model, ids, pixels)
    first_image_token = 2
    assert not torch.allclose(base[0, first_image_token], _logits(model, ids, later_patch)[0, first_image_token])
    later_text = ids.clone()
    later_text[0, -1] = 30
    assert torch.equal(base[0, :-1], _logits(model, later_text, pixels)[0, :-1])

    causal = make_vora(tiny, teacher=False, vision_attention="causal")
    base_c = _logits(causal, ids, pixels)
    moved_c = _logits(causal, ids, later_patch)
    assert torch.equal(base_c[0, : first_image_token + 15], moved_c[0, : first_image_token + 15])


def test_two_images_never_see_each_other_bidirectionally(tiny):
    model = make_vora(tiny, teacher=False)
    ids = torch.tensor([[10, *image_run(tiny, 16), *image_run(tiny, 16), 11]])  # adjacent images
    first, second = torch.randn(3, 32, 32), torch.randn(3, 32, 32)
    base = _logits(model, ids, [first, second])
    changed = _logits(model, ids, [first, second + 1.0])
    assert torch.equal(base[0, :17], changed[0, :17])  # image 0 (and the text before) ignore image 1
    assert not torch.allclose(base[0, 17], changed[0, 17])  # image 1's first token sees its own last one


def test_packed_documents_are_isolated_and_equal_to_running_alone(tiny):
    model = make_vora(tiny, teacher=False)
    doc_a = [10, *image_run(tiny, 16), 11, 12]
    doc_b = [13, 14, *image_run(tiny, 16), 15]
    img_a, img_b = torch.randn(3, 32, 32), torch.randn(3, 32, 32)
    packed = torch.tensor([doc_a + doc_b])
    doc_ids = torch.tensor([[0] * len(doc_a) + [1] * len(doc_b)])
    both = _logits(model, packed, [img_a, img_b], doc_ids=doc_ids)
    alone_a = _logits(model, torch.tensor([doc_a]), [img_a])
    alone_b = _logits(model, torch.tensor([doc_b]), [img_b])
    torch.testing.assert_close(both[0, : len(doc_a)], alone_a[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(both[0, len(doc_a):], alone_b[0], rtol=0, atol=1e-5)


def test_left_padding_gives_the_unpadded_result(tiny):
    model = make_vora(tiny, teacher=False)
    row = [10, *image_run(tiny, 16), 11, 12]
    padded = torch.tensor([[0, 0, 0, *row]])
    mask = torch.tensor([[0, 0, 0] + [1] * len(row)])
    img = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(_logits(model, padded, img, attention_mask=mask)[0, 3:],
                               _logits(model, torch.tensor([row]), img)[0], rtol=0, atol=1e-5)


def test_sdpa_and_eager_agree(tiny):
    ids = torch.tensor([[10, *image_run(tiny, 16), 11, 12, *image_run(tiny, 16), 13]])
    doc_ids = torch.tensor([[0] * 19 + [1] * 17])
    pixels = [torch.randn(3, 32, 32), torch.randn(3, 32, 32)]
    sdpa_model, eager_model = make_vora(tiny, attn="sdpa", teacher=False), make_vora(tiny, attn="eager", teacher=False)
    assert sdpa_model.llm.config._attn_implementation == "sdpa"
    assert eager_model.llm.config._attn_implementation == "eager"
    sdpa = _logits(sdpa_model, ids, pixels, doc_ids=doc_ids)
    eager = _logits(eager_model, ids, pixels, doc_ids=doc_ids)
    torch.testing.assert_close(sdpa, eager, rtol=0, atol=1e-5)


def test_causal_mode_equals_the_llms_own_causal_output(tiny):
    model = make_vora(tiny, teacher=False, vision_attention="causal")
    ids = torch.tensor([[10, 11, *image_run(tiny, 16), 12, 13]])
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        embeds[ids == tiny.image_token_id] = model.vision_embedding(pixels)
        own = model.llm(inputs_embeds=embeds).logits  # HF's causal mask, not ours
    # doc_ids forces VoRA's own 4-D float mask path
    ours = _logits(model, ids, pixels, doc_ids=torch.zeros_like(ids))
    torch.testing.assert_close(ours, own, rtol=0, atol=1e-6)
