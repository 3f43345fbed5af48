"""The only vision-specific module of VoRA: patches → LLM-width tokens.

Conv(patch) → RMSNorm → + 2-D positional embedding (interpolated to the image's grid) → Linear
(no bias) to the LLM width. Images may differ in size; same-sized images share one convolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vora_core.errors import ModelError


class VisionRMSNorm(nn.Module):
    """RMSNorm computed in fp32 (as AIMv2's), so the embedding matches the teacher's at init."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def interpolate_pos_embed(pos: torch.Tensor, base: int, rows: int, cols: int) -> torch.Tensor:
    """[base², D] table → [rows·cols, D] by bicubic interpolation; the base grid is returned as is."""
    if (rows, cols) == (base, base):
        return pos
    grid = pos.float().reshape(1, base, base, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(rows * cols, -1).to(pos.dtype)


class VisionEmbedding(nn.Module):
    def __init__(self, patch_size: int, vision_hidden: int, llm_hidden: int, base_grid: int,
                 eps: float = 1e-6, num_channels: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.base_grid = base_grid
        self.patch_embed = nn.Conv2d(num_channels, vision_hidden, kernel_size=patch_size, stride=patch_size)
        self.rms_norm = VisionRMSNorm(vision_hidden, eps)
        self.pos_embed = nn.Parameter(torch.zeros(base_grid * base_grid, vision_hidden))
        self.proj = nn.Linear(vision_hidden, llm_hidden, bias=False)

    def pos_embed_for(self, rows: int, cols: int) -> torch.Tensor:
        return interpolate_pos_embed(self.pos_embed, self.base_grid, rows, cols)

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] same-sized images → [N, rows·cols, Dv] (before the projection)."""
        rows, cols = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        x = self.patch_embed(images.to(self.patch_embed.weight.dtype)).flatten(2).transpose(1, 2)
        x = self.rms_norm(x)
        return x + self.pos_embed_for(rows, cols).to(x.dtype)

    def forward(self, pixel_values: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Images in reading order → their tokens concatenated in the same order, [Σ rows·cols, H_llm]."""
        groups = group_by_size(pixel_values, self.patch_size)
        out: list[torch.Tensor | None] = [None] * len(groups.sizes)
        for stack, members in groups.batches:
            tokens = self.proj(self.embed_patches(stack))
            for slot, image_tokens in zip(members, tokens.unbind(0), strict=True):
                out[slot] = image_tokens
        return torch.cat(out, dim=0) if len(out) > 1 else out[0]


class SizeGroups:
    """Images grouped by (H, W) so each group is one batched convolution."""

    def __init__(self, batches: list[tuple[torch.Tensor, list[int]]], sizes: list[tuple[int, int]]) -> None:
        self.batches = batches
        self.sizes = sizes  # per image, reading order


def group_by_size(pixel_values: torch.Tensor | Sequence[torch.Tensor], patch_size: int) -> SizeGroups:
    if isinstance(pixel_values, torch.Tensor):
        if pixel_values.dim() != 4:
            raise ModelError(f"pixel_values must be [N, 3, H, W] or a list of [3, H, W], "
                             f"got {tuple(pixel_values.shape)}")
        sizes = [tuple(pixel_values.shape[-2:])] * pixel_values.shape[0]
        _check_sizes(sizes, patch_size)
        return SizeGroups([(pixel_values, list(range(pixel_values.shape[0])))], sizes)
    sizes = [tuple(img.shape[-2:]) for img in pixel_values]
    _check_sizes(sizes, patch_size)
    members: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(sizes):
        members.setdefault(size, []).append(i)
    batches = [(torch.stack([pixel_values[i] for i in idx]), idx) for idx in members.values()]
    return SizeGroups(batches, sizes)


def _check_sizes(sizes: list[tuple[int, int]], patch_size: int) -> None:
    for h, w in set(sizes):
        if h % patch_size or w % patch_size:
            raise ModelError(
                f"image of {w}x{h} pixels is not a multiple of patch_size={patch_size}; "
                "resize it with vora_core.model.image_processing.preprocess_image"
            )


def grids_of(pixel_values: torch.Tensor | Sequence[torch.Tensor], patch_size: int) -> list[tuple[int, int]]:
    """(rows, cols) of every image, in order, read from shapes only (no device sync)."""
    if isinstance(pixel_values, torch.Tensor):
        return [(pixel_values.shape[-2] // patch_size, pixel_values.shape[-1] // patch_size)] * pixel_values.shape[0]
    return [(img.shape[-2] // patch_size, img.shape[-1] // patch_size) for img in pixel_values]


@torch.no_grad()
def init_from_teacher(embedding: VisionEmbedding, teacher: nn.Module, teacher_image_size: int) -> bool:
    """Copy AIMv2's patch embedding (conv, RMSNorm, positional table) when the shapes agree.

    The positional table is read back from the teacher's own embedding of a black image minus the
    normalised conv bias, which covers both AIMv2's learnt table and its native sinusoidal one.
    Returns whether the copy happened.
    """
    emb = getattr(teacher, "embeddings", None)
    conv = getattr(emb, "patch_embed", None)
    norm = getattr(emb, "rms_norm", None)
    if not isinstance(conv, nn.Conv2d) or norm is None:
        return False
    if conv.weight.shape != embedding.patch_embed.weight.shape:
        return False
    if teacher_image_size // conv.stride[0] != embedding.base_grid:
        return False
    embedding.patch_embed.weight.copy_(conv.weight)
    if conv.bias is not None:
        embedding.patch_embed.bias.copy_(conv.bias)
    else:
        embedding.patch_embed.bias.zero_()
    embedding.rms_norm.weight.copy_(norm.weight)
    device, dtype = conv.weight.device, conv.weight.dtype
    black = torch.zeros(1, conv.in_channels, teacher_image_size, teacher_image_size, device=device, dtype=dtype)
    with_pos = emb(black)[0]
    bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels, device=device, dtype=dtype)
    embedding.pos_embed.copy_(with_pos - norm(bias[None, None, :])[0])
    return True
