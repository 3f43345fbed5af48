"""Frozen linear weights stored in bf16 under bf16 autocast: the same step, restored exactly."""

from __future__ import annotations

import copy
import random

import torch
from model_helpers import make_vora, packed_batch, randomize_lora

from vora_core.model import frozen_weights
from vora_core.model.lora import configure_trainable


@torch.no_grad()
def round_to_bf16(model) -> None:
    """What loading a bf16 checkpoint in fp32 gives: every value one that bf16 holds."""
    for param in model.parameters():
        param.copy_(param.to(torch.bfloat16).float())


def step(model, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_bf16_storage_gives_the_same_step_and_restores_exactly(tiny):
    model = make_vora(tiny)
    configure_trainable(model, "pretrain")
    randomize_lora(model)
    round_to_bf16(model)
    rounded = model.llm.model.layers[1].mlp.down_proj
    with torch.no_grad():  # one frozen weight bf16 does not hold: it must stay fp32
        rounded.weight[0, 0] += 2.0 ** -20
    lean = copy.deepcopy(model)
    names = frozen_weights.store_exact(lean)

    params = dict(lean.named_parameters(remove_duplicate=False))
    frozen_linear = {f"{m}.{n}" for m, mod in lean.named_modules() if isinstance(mod, torch.nn.Linear)
                     for n, p in mod.named_parameters(recurse=False) if not p.requires_grad}
    tied = {"llm.lm_head.weight"}  # the tiny LLM ties it to the embedding table: its lookup must stay fp32
    assert tied <= frozen_linear and lean.llm.lm_head.weight is lean.llm.model.embed_tokens.weight
    assert sorted(names) == sorted(frozen_linear - tied - {"llm.model.layers.1.mlp.down_proj.base_layer.weight"})
    assert len(names) > 20 and not any("lora_" in n for n in names)
    assert {params[n].dtype for n in names} == {torch.bfloat16}
    assert params["llm.model.layers.1.mlp.down_proj.base_layer.weight"].dtype == torch.float32
    assert params["llm.model.embed_tokens.weight"].dtype == torch.float32

    batch = packed_batch(tiny, random.Random(3), 48)
    model.train(), lean.train()
    loss, grads = step(model, batch)
    lean_loss, lean_grads = step(lean, batch)
    assert torch.equal(lean_loss, loss)
    assert grads.keys() == lean_grads.keys() and len(grads) > 10
    assert all(torch.equal(lean_grads[n], grads[n]) for n in grads)

    frozen_weights.restore(lean, names)
    after, before = lean.state_dict(), model.state_dict()
    assert after.keys() == before.keys()
    assert all(after[k].dtype == before[k].dtype and torch.equal(after[k], before[k]) for k in before)
