"""Where a model runs and in what precision: `auto` resolved the same way everywhere (evaluate, merge,
the captioner)."""

from __future__ import annotations

import torch


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device | str) -> torch.dtype:
    """`auto`: bfloat16 on a GPU, float32 elsewhere; else the torch dtype of that name."""
    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return getattr(torch, dtype)
