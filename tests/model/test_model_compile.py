"""Regional compilation (vora_core.model.compile): the compiled training steps equal eager ones, and packed
rows of other lengths and document layouts reuse the one graph that all decoder blocks share.

One compiled model for the module (inductor on CPU is slow to compile); every batch holds an image, so
every block's input requires grad and the three LoRA'd blocks can share a single graph.
"""

from __future__ import annotations

import random

import pytest
import torch
from model_helpers import make_vora, packed_batch

from vora_core.model.compile import compile_blocks

LENGTHS = (40, 57, 33, 64)  # one batch each, in this order


def train_steps(model, batches: list[dict]) -> list[float]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, foreach=True)
    losses = []
    for batch in batches:
        out = model(**batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(out.loss.item())
    return losses


@pytest.fixture(scope="module")
def runs(tiny):
    from torch._dynamo.utils import counters

    from vora_core.model.lora import configure_trainable

    torch._dynamo.reset()
    counters.clear()
    rng = random.Random(0)
    batches = [packed_batch(tiny, rng, n) for n in LENGTHS]
    models = []
    for compiled in (False, True):
        model = make_vora(tiny, teacher=False, lora_layers=3).train()
        configure_trainable(model, "pretrain")
        if compiled:
            assert compile_blocks(model) == 3
            assert compile_blocks(model) == 0  # already compiled
        models.append(model)
    graphs_after = []
    compiled_losses = []
    optimizer = torch.optim.AdamW([p for p in models[1].parameters() if p.requires_grad], lr=1e-2, foreach=True)
    for batch in batches:  # the compiled run, counting graphs after each batch
        out = models[1](**batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        compiled_losses.append(out.loss.item())
        graphs_after.append(counters["stats"]["unique_graphs"])
    return {"eager": train_steps(models[0], batches), "compiled": compiled_losses, "graphs_after": graphs_after,
            "frames": dict(counters["frames"]), "breaks": sum(counters["graph_break"].values())}


def test_compiled_steps_equal_eager(runs) -> None:
    assert len(runs["compiled"]) == len(LENGTHS)
    torch.testing.assert_close(runs["compiled"], runs["eager"], rtol=1e-5, atol=1e-5)
    assert runs["eager"][-1] != runs["eager"][0]  # the optimizer steps changed the weights the graph reads


def test_one_graph_for_all_blocks_and_batches(runs) -> None:
    # Three blocks, four batches of other lengths and document layouts: one graph, compiled once.
    assert runs["graphs_after"] == [1, 1, 1, 1]
    assert runs["frames"] == {"total": 1, "ok": 1}
    assert runs["breaks"] == 0
