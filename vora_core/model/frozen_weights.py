"""Frozen linear weights kept in the autocast dtype while training (`TrainSettings.frozen_bf16`).

Under bf16 autocast every `F.linear` casts its fp32 weight to bf16 on each forward (autocast caches
casts only for weights that require grad) and keeps the bf16 copy for the backward: a frozen LLM is
held twice, fp32 and bf16. A frozen weight whose values bf16 holds exactly (a bf16 checkpoint loaded in
fp32, as Qwen2.5's is) can be stored in bf16 instead: autocast's cast of it is the identity, so an
eager step computes the same numbers (compiled, inductor may pick other matmul kernels: within
rounding). Measured at Qwen2.5-7B dimensions on an H200 (GPU suite, README): peak memory 80.0 → 52.7
GiB, the same step time. Only `nn.Linear` parameters are candidates (every use of them goes through
autocast's cast); a parameter shared with another kind of module (a tied embedding: its lookup would
return bf16) and one that bf16 would round are left in fp32. Convert before the first compiled call:
compiled blocks do not guard on a parameter's dtype changed in place. `restore` puts them back in
fp32 (exactly: the values were bf16's) before anything is saved.
"""

from __future__ import annotations

import torch
from torch import nn


def _linear_only(module: nn.Module) -> dict[int, tuple[str, nn.Parameter]]:
    """Frozen parameters used by `nn.Linear` modules and by nothing else, by id."""
    owners: dict[int, set[bool]] = {}
    found: dict[int, tuple[str, nn.Parameter]] = {}
    for mod_name, mod in module.named_modules(remove_duplicate=False):
        for name, param in mod.named_parameters(recurse=False):
            owners.setdefault(id(param), set()).add(isinstance(mod, nn.Linear))
            if isinstance(mod, nn.Linear) and not param.requires_grad and param.dtype == torch.float32:
                found.setdefault(id(param), (f"{mod_name}.{name}" if mod_name else name, param))
    return {key: item for key, item in found.items() if owners[key] == {True}}


@torch.no_grad()
def store_exact(module: nn.Module, dtype: torch.dtype = torch.bfloat16) -> list[str]:
    """Store in `dtype` the frozen fp32 linear weights (and biases) that `dtype` holds exactly; returns
    their names. Parameters are converted in place (`.data`), so optimizers and hooks are unaffected."""
    converted = []
    for name, param in _linear_only(module).values():
        lean = param.data.to(dtype)
        if torch.equal(lean.to(param.dtype), param.data):
            param.data = lean
            converted.append(name)
    return converted


@torch.no_grad()
def restore(module: nn.Module, names: list[str], dtype: torch.dtype = torch.float32) -> None:
    """Undo `store_exact` for `names` (exact: every stored value is one `dtype` holds)."""
    wanted = set(names)
    for name, param in module.named_parameters(remove_duplicate=False):
        if name in wanted and param.dtype != dtype:
            param.data = param.data.to(dtype)
