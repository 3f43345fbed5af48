"""Cached decoding for VoRA: prefill with the image-bidirectional mask, then one token per step.

Left-padded batches with images of different sizes work: padding is document −1 (never seen by
real tokens) and positions count real tokens only, so a padded row decodes exactly as it would alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers import DynamicCache

if TYPE_CHECKING:
    from vora_core.model.modeling import VoRAForCausalLM


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _pick(logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float,
          generator: torch.Generator | None) -> torch.Tensor:
    if not do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / max(temperature, 1e-5), dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest prefix reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: VoRAForCausalLM,
    input_ids: torch.LongTensor,
    attention_mask: torch.Tensor | None = None,
    pixel_values: torch.Tensor | list[torch.Tensor] | None = None,
    max_new_tokens: int = 64,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    **_: Any,
) -> torch.LongTensor:
    """New tokens [B, ≤ max_new_tokens] (rows that stopped early are filled with `pad_token_id`).

    `input_ids` must be left-padded (`attention_mask` 0 on the left) so that every row's next token
    is at the same column. `eos_token_id` defaults to the LLM config's.
    """
    text_config = model.config.text_config
    if eos_token_id is None:
        eos_token_id = text_config.eos_token_id
    eos = torch.tensor(
        [] if eos_token_id is None else ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)),
        dtype=torch.long, device=input_ids.device,
    )
    if pad_token_id is None:
        pad_token_id = text_config.pad_token_id if text_config.pad_token_id is not None else (
            int(eos[0]) if len(eos) else 0)
    batch = input_ids.shape[0]
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    was_training = model.training
    model.eval()
    cache = DynamicCache(config=text_config)
    out = model(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                position_ids=_positions(attention_mask), past_key_values=cache, use_cache=True, logits_to_keep=1)
    done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    new_tokens = []
    for step in range(max_new_tokens):
        token = _pick(out.logits[:, -1], do_sample, temperature, top_p, generator)
        token = torch.where(done, pad_token_id, token)
        new_tokens.append(token)
        done = done | torch.isin(token, eos)
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        attention_mask = torch.cat([attention_mask, torch.ones_like(attention_mask[:, :1])], dim=1)
        out = model(input_ids=token[:, None], attention_mask=attention_mask,
                    position_ids=_positions(attention_mask)[:, -1:], past_key_values=out.past_key_values,
                    use_cache=True, logits_to_keep=1)
    model.train(was_training)
    return torch.stack(new_tokens, dim=1)
