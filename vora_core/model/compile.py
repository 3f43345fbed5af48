"""Regional compilation: `torch.compile` of the LLM's decoder blocks, not of the whole model.

Every block runs the same `forward` code, so Dynamo compiles it once and reuses the graph for the
other blocks (parameters are graph inputs, not constants): compile time is one block's, whatever the
depth. Blocks with LoRA and blocks without it differ in structure, so a partly LoRA'd LLM gets two
graphs. Only `forward` is compiled: the modules' hooks (distillation captures block inputs with
per-forward pre-hooks) and gradient checkpointing (`GradientCheckpointingLayer.__call__`) stay eager
around it, so neither changes what is compiled.

The sequence length and batch dimensions are dynamic from the first call (`dynamic=True`): packed rows
of another length or document layout reuse the graph (the mask's values change, not the code).
Dimensions of size 1 are specialised by Dynamo, so a batch of one row and one of two rows compile once
each.
"""

from __future__ import annotations

import functools

import torch
from torch import nn


def compile_blocks(model: nn.Module, backend: str = "inductor") -> int:
    """Compile the `forward` of each decoder block of `model` (a VoRA model or an HF causal LM) in place.

    Returns the number of blocks compiled. Idempotent: compiled blocks are left as they are."""
    decoder = model.llm.get_decoder() if hasattr(model, "llm") else model.get_decoder()
    compiled = 0
    functions: dict[type, object] = {}  # one compiled function per block class: its cache serves every block
    for layer in decoder.layers:
        if getattr(layer, "_vora_compiled", False):
            continue
        cls = type(layer)
        if cls not in functions:
            functions[cls] = torch.compile(cls.forward, backend=backend, dynamic=True)
        layer.forward = functools.partial(functions[cls], layer)
        layer._vora_compiled = True
        compiled += 1
    return compiled
