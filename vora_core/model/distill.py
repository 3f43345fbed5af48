"""Block-wise distillation: LLM block i ↔ teacher block i (HF `hidden_states[i]`, i = 1..N).

Block i's output is `hidden_states[i]` in HF's convention (index 0 = embeddings). On the student
it is captured as the *input* of block i+1 (or of the final norm for the last block): that tensor
lives outside any gradient-checkpointed region, so the gradient reaches LoRA whatever the
checkpointing mode, and it is the pre-norm output even for the last block (HF replaces
`hidden_states[-1]` by the normed state). On the teacher the forward stops after the deepest
distilled block, under `no_grad`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from vora_core.errors import ModelError
from vora_core.model.vision_embedding import VisionRMSNorm, group_by_size


class AuxHead(nn.Module):
    """RMSNorm(H) + Linear(H → D_teacher, no bias): maps an LLM block's vision tokens to the teacher's space."""

    def __init__(self, llm_hidden: int, teacher_hidden: int, eps: float) -> None:
        super().__init__()
        self.norm = VisionRMSNorm(llm_hidden, eps)
        self.proj = nn.Linear(llm_hidden, teacher_hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of 1 − cos(student, teacher), in fp32."""
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of an HF model: the longest `*layers` ModuleList (encoder or decoder)."""
    best: nn.ModuleList | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in ("layers", "layer", "h", "blocks"):
            if best is None or len(module) > len(best):
                best = module
    if best is None:
        raise ModelError(f"cannot find the transformer blocks of {type(model).__name__} (no `layers` ModuleList)")
    return best


@contextmanager
def capture_student_blocks(decoder: nn.Module, blocks: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Collect LLM block outputs {i: [B, L, H]} (1-based) during one forward of `decoder`."""
    layers = decoder.layers
    captured: dict[int, torch.Tensor] = {}
    handles = []

    def grab(i: int):
        def hook(module, args, kwargs):
            captured[i] = args[0] if args else kwargs["hidden_states"]

        return hook

    for i in blocks:
        target = layers[i] if i < len(layers) else decoder.norm
        handles.append(target.register_forward_pre_hook(grab(i), with_kwargs=True))
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


class _StopTeacher(Exception):
    pass


@torch.no_grad()
def teacher_block_outputs(teacher: nn.Module, images: torch.Tensor, blocks: Sequence[int]) -> dict[int, torch.Tensor]:
    """Teacher block outputs {i: [N, T, D]} for i in `blocks`, stopping after the deepest one."""
    layers = find_blocks(teacher)
    deepest = max(blocks)
    captured: dict[int, torch.Tensor] = {}
    handles = []

    def grab(i: int):
        def hook(module, args, output):
            captured[i] = output[0] if isinstance(output, tuple) else output
            if i == deepest:
                raise _StopTeacher

        return hook

    for i in blocks:
        handles.append(layers[i - 1].register_forward_hook(grab(i)))
    try:
        teacher(pixel_values=images)
    except _StopTeacher:
        pass
    finally:
        for h in handles:
            h.remove()
    return captured


def teacher_input_size(teacher_config) -> int | None:
    """Fixed square input size of the teacher, or None when it takes native resolution (AIMv2-native)."""
    if getattr(teacher_config, "is_native", False):
        return None
    size = teacher_config.image_size
    return size[0] if isinstance(size, (list, tuple)) else size


@torch.no_grad()
def teacher_targets(teacher: nn.Module, teacher_config, pixel_values: torch.Tensor | Sequence[torch.Tensor],
                    student_patch: int, blocks: Sequence[int]) -> dict[int, torch.Tensor]:
    """Teacher tokens per distilled block, on the student's grid, concatenated in image order: {i: [Nv, D]}.

    Images are resized to the teacher's input size when it is fixed; teacher tokens are
    interpolated (bilinear) to the student's grid when the grids differ; prefix tokens (CLS) are dropped.
    """
    size = teacher_input_size(teacher_config)
    t_patch = teacher_config.patch_size
    t_patch = t_patch[0] if isinstance(t_patch, (list, tuple)) else t_patch
    groups = group_by_size(pixel_values, student_patch)
    per_image: dict[int, list[torch.Tensor | None]] = {i: [None] * len(groups.sizes) for i in blocks}
    dtype = next(teacher.parameters()).dtype
    for stack, members in groups.batches:
        height, width = stack.shape[-2:]
        rows, cols = height // student_patch, width // student_patch
        x = stack.to(dtype)
        if size is not None and (height, width) != (size, size):
            x = F.interpolate(x.float(), size=(size, size), mode="bicubic", align_corners=False,
                              antialias=True).to(dtype)
        t_rows, t_cols = x.shape[-2] // t_patch, x.shape[-1] // t_patch
        outputs = teacher_block_outputs(teacher, x, blocks)
        for i, hidden in outputs.items():
            hidden = hidden[:, hidden.shape[1] - t_rows * t_cols:]  # drop CLS / register tokens
            if (t_rows, t_cols) != (rows, cols):
                grid = hidden.float().transpose(1, 2).reshape(hidden.shape[0], -1, t_rows, t_cols)
                grid = F.interpolate(grid, size=(rows, cols), mode="bilinear", align_corners=False)
                hidden = grid.flatten(2).transpose(1, 2).to(hidden.dtype)
            for slot, tokens in zip(members, hidden.unbind(0), strict=True):
                per_image[i][slot] = tokens
    return {i: torch.cat(parts, dim=0) for i, parts in per_image.items()}
