"""Attention masks for packed, image-bidirectional sequences, built vectorised.

Rule (DESIGN "Attention"): token q sees token kv iff `doc[q] == doc[kv]` and (`kv ≤ q` or, in
`bidirectional` mode, `image[q] == image[kv] ≥ 0`). Padding is document −1: padded keys are never
seen by real tokens, and padded queries see earlier padding only, so no softmax row is empty.

Because an image's placeholder tokens form one contiguous run, the rule is equivalent to
`doc[q] == doc[kv] and kv ≤ limit[q]` with `limit[q]` = the last position of q's image for image
tokens and `q` itself otherwise. That form needs one [B, Lq] vector, makes the dense mask two
comparisons, and makes the FlexAttention `mask_mod` two gathers.
"""

from __future__ import annotations

import torch

from vora_core.errors import ModelError


def image_ids_from_input_ids(
    input_ids: torch.Tensor, image_token_id: int, tokens_per_image: torch.Tensor
) -> torch.Tensor:
    """Image index (into the batch's image list, in reading order) of every token; −1 for text.

    The k-th placeholder of the flattened batch belongs to the first image whose cumulative token
    count exceeds k, so adjacent images are told apart without any separator token.
    """
    is_image = input_ids == image_token_id
    ordinal = is_image.flatten().cumsum(0) - 1
    bounds = tokens_per_image.to(input_ids.device).cumsum(0)
    owner = torch.searchsorted(bounds, ordinal, right=True)
    return torch.where(is_image.flatten(), owner, -1).view_as(input_ids)


def check_image_token_count(input_ids: torch.Tensor, image_token_id: int, expected: int) -> None:
    """Placeholders must equal the vision tokens. Raises on CPU; on CUDA asserts without a host sync."""
    found = (input_ids == image_token_id).sum()
    if input_ids.device.type == "cpu":
        if int(found) != expected:
            raise ModelError(
                f"input_ids hold {int(found)} image placeholder tokens but the images give {expected} "
                "vision tokens; expand each <image> by num_image_tokens(height, width) of its image"
            )
    else:
        torch._assert_async(found == expected)


def padding_doc_ids(attention_mask: torch.Tensor | None, doc_ids: torch.Tensor | None, shape: torch.Size,
                    device: torch.device) -> torch.Tensor:
    """Document id per token: given `doc_ids` (packing) or 0, with padding (mask 0) set to −1."""
    docs = doc_ids.to(device) if doc_ids is not None else torch.zeros(shape, dtype=torch.long, device=device)
    if attention_mask is not None:
        docs = torch.where(attention_mask.to(device).bool(), docs, -1)
    return docs


def positions_from_doc_ids(doc_ids: torch.Tensor) -> torch.Tensor:
    """Position of every token inside its document (restarts at 0 at each document start)."""
    length = doc_ids.shape[-1]
    idx = torch.arange(length, device=doc_ids.device).expand_as(doc_ids)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.where(starts, idx, 0).cummax(dim=-1).values
    return idx - first


def visibility_limit(image_ids: torch.Tensor, num_images: int, bidirectional: bool) -> torch.Tensor:
    """`limit[b, t]`: the last kv position token t may see (its image's end, else t itself)."""
    pos = torch.arange(image_ids.shape[-1], device=image_ids.device).expand_as(image_ids)
    if not bidirectional or num_images == 0:
        return pos.clone()
    # One bucket per image plus a dump bucket (index num_images) for text: no boolean indexing, no sync.
    bucket = torch.where(image_ids >= 0, image_ids, num_images).flatten()
    ends = torch.full((num_images + 1,), -1, dtype=torch.long, device=image_ids.device)
    ends.scatter_reduce_(0, bucket, pos.flatten(), reduce="amax")
    return torch.where(image_ids >= 0, ends[bucket].view_as(image_ids), pos)


def dense_mask(doc_ids: torch.Tensor, limit: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive float mask [B, 1, Lq, Lkv] (0 = visible, dtype min = hidden).

    `doc_ids` covers the keys [B, Lkv]; `limit` covers the queries [B, Lq], which are the last Lq
    keys (prefill: Lq = Lkv; cached decoding: Lq = new tokens).
    """
    lq, lkv = limit.shape[-1], doc_ids.shape[-1]
    q_doc = doc_ids[:, lkv - lq:]
    kv_pos = torch.arange(lkv, device=doc_ids.device)
    hidden = (q_doc[:, :, None] != doc_ids[:, None, :]) | (kv_pos[None, None, :] > limit[:, :, None])
    mask = torch.zeros(hidden.shape, dtype=dtype, device=doc_ids.device)
    return mask.masked_fill_(hidden, torch.finfo(dtype).min).unsqueeze(1)


def block_mask(doc_ids: torch.Tensor, limit: torch.Tensor):
    """FlexAttention `BlockMask` with the same rule (CUDA only: flex has no CPU backward)."""
    from torch.nn.attention.flex_attention import create_block_mask

    lq, lkv = limit.shape[-1], doc_ids.shape[-1]
    offset = lkv - lq
    doc_ids, limit = doc_ids.contiguous(), limit.contiguous()

    def mask_mod(b, h, q_idx, kv_idx):
        return (doc_ids[b, q_idx + offset] == doc_ids[b, kv_idx]) & (kv_idx <= limit[b, q_idx])

    return create_block_mask(mask_mod, doc_ids.shape[0], None, lq, lkv, device=doc_ids.device)


def build_attention_mask(doc_ids: torch.Tensor, limit: torch.Tensor, attn_implementation: str | None,
                         dtype: torch.dtype):
    """The mask object the LLM's attention implementation wants (dense float or `BlockMask`)."""
    if attn_implementation == "flex_attention":
        if doc_ids.device.type != "cuda":
            raise ModelError(
                "attn_implementation='flex_attention' needs CUDA (FlexAttention has no CPU backward); "
                "use attn_implementation='sdpa' on CPU"
            )
        return block_mask(doc_ids, limit)
    if attn_implementation in (None, "sdpa", "eager"):
        return dense_mask(doc_ids, limit, dtype)
    raise ModelError(
        f"attn_implementation={attn_implementation!r} cannot express the image-bidirectional, packed mask; "
        "use 'sdpa', 'eager' or (on CUDA) 'flex_attention'"
    )
