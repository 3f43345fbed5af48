"""FlexAttention `BlockMask` path (CUDA only): same logits and gradients as the dense float mask."""

from __future__ import annotations

import pytest
import torch
from model_helpers import image_run, make_vora, randomize_lora

from vora_core.model import masks

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_block_mask_matches_the_dense_rule_everywhere():
    """Mask creation and a forward run on CPU too (only FlexAttention's backward needs CUDA)."""
    from torch.nn.attention.flex_attention import flex_attention

    docs = torch.tensor([[0] * 70 + [1] * 60 + [-1] * 20, [-1] * 30 + [0] * 120], device=DEVICE)
    image_ids = torch.full_like(docs, -1)
    image_ids[0, 10:40], image_ids[0, 40:50], image_ids[0, 90:130], image_ids[1, 31:100] = 0, 1, 2, 3
    limit = masks.visibility_limit(image_ids, 4, True)
    block = masks.block_mask(docs, limit)
    dense = masks.dense_mask(docs, limit, torch.float32) == 0
    q = torch.arange(150, device=DEVICE)
    for b in range(2):
        got = block.mask_mod(torch.tensor(b, device=DEVICE), torch.tensor(0, device=DEVICE), q[:, None], q[None, :])
        assert torch.equal(got, dense[b, 0])
    torch.manual_seed(0)
    query, key, value = (torch.randn(2, 2, 150, 16, device=DEVICE) for _ in range(3))
    flex = flex_attention(query, key, value, block_mask=block)
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=masks.dense_mask(docs, limit, torch.float32))
    torch.testing.assert_close(flex, sdpa, rtol=0, atol=1e-5)
    assert masks.block_mask(docs, limit[:, -1:]).shape == (2, 1, 1, 150)  # cached decoding step


@pytest.mark.gpu
def test_flex_equals_sdpa_forward_and_backward(tiny):
    if not torch.cuda.is_available():
        pytest.skip("FlexAttention BlockMask needs CUDA (no CPU backward); the dense path is tested on CPU")
    ids = torch.tensor([[10, *image_run(tiny, 16), 11, 12, *image_run(tiny, 16), 13, 14, 15]], device="cuda")
    doc_ids = torch.tensor([[0] * 19 + [1] * 19], device="cuda")
    labels = torch.where(ids == tiny.image_token_id, -100, ids)
    torch.manual_seed(0)
    pixels = [torch.randn(3, 32, 32, device="cuda"), torch.randn(3, 32, 32, device="cuda")]
    results = {}
    for attn in ("sdpa", "flex_attention"):
        model = make_vora(tiny, attn=attn).cuda()
        randomize_lora(model)
        model.train()
        with torch.no_grad():
            logits = model.eval()(input_ids=ids, pixel_values=pixels, doc_ids=doc_ids).logits
        model.train()
        out = model(input_ids=ids, pixel_values=pixels, doc_ids=doc_ids, labels=labels)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if ".lora_" in n and p.grad is not None}
        results[attn] = (logits, out.loss.detach(), grads)
    (l1, loss1, g1), (l2, loss2, g2) = results["sdpa"], results["flex_attention"]
    torch.testing.assert_close(l1, l2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss1, loss2, rtol=1e-4, atol=1e-5)
    assert g1.keys() == g2.keys() and len(g1) > 0
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], rtol=1e-3, atol=1e-5)
