"""`VoRAConfig`: the LLM config, the teacher config and the VoRA recipe settings in one HF config."""

from __future__ import annotations

import math
from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from vora_core.errors import ModelError

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_ATTENTION = ("bidirectional", "causal")
DISTILL = ("blockwise", "last", "none")
IMAGE_RESIZE = ("fixed", "native")
# AIMv2 / CLIP normalisation: the teacher and the student see the same pixels.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


class VoRAConfig(PreTrainedConfig):
    """Configuration of an encoder-free VoRA model.

    `text_config` is the decoder LLM's config (Qwen2 or Llama family); `teacher_config` the frozen
    vision teacher's (AIMv2 / SigLIP / CLIP vision tower; `None` after merge). The other fields are
    the recipe: LoRA rank and depth, image attention mode, distillation mode, and the vision
    embedding geometry (`image_size`, `patch_size`, `vision_hidden`, `max_image_tokens`).

    `lm_loss_chunk`: label positions per chunk of the LM loss (0: the whole batch's logits at once);
    see `vora_core.model.loss`.

    `per_document_attention` (`auto` | `always` | `never`): under `sdpa`, packed rows attend per
    document, the masked-away score tiles not computed (`vora_core.model.document_attention`; `auto`:
    where it saves enough per token to pay). Not with compiled blocks.

    `image_resize="fixed"` resizes every image to `image_size`²; `"native"` keeps the aspect ratio
    with at most `max_image_tokens` patches (the positional embedding is interpolated to the grid).
    """

    model_type = "vora"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
        "teacher_config": SubConfigSpec(config_class=AutoConfig, model_type="aimv2_vision_model", optional=True),
    }

    text_config: dict | PreTrainedConfig | None = None
    teacher_config: dict | PreTrainedConfig | None = None
    lora_rank: int = 1024
    lora_alpha: int | None = None
    lora_layers: int | None = None
    lora_targets: list[str] | None = None
    vision_attention: str = "bidirectional"
    distill: str = "blockwise"
    distill_weight: float = 1.0
    image_size: int = 448
    patch_size: int = 14
    vision_hidden: int | None = None
    max_image_tokens: int | None = None
    image_resize: str = "fixed"
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    image_token: str = "<|image_pad|>"
    image_token_id: int | None = None
    vision_rms_norm_eps: float | None = None
    initializer_range: float = 0.02
    lm_loss_chunk: int = 4096
    per_document_attention: str = "auto"

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.vision_attention not in VISION_ATTENTION:
            raise ModelError(f"vision_attention={self.vision_attention!r} is not one of {VISION_ATTENTION}")
        if self.distill not in DISTILL:
            raise ModelError(f"distill={self.distill!r} is not one of {DISTILL}")
        if self.image_resize not in IMAGE_RESIZE:
            raise ModelError(f"image_resize={self.image_resize!r} is not one of {IMAGE_RESIZE}")
        if self.image_size % self.patch_size:
            raise ModelError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}; "
                "pick an image_size divisible by the patch size"
            )
        self.lora_targets = list(self.lora_targets or LORA_TARGETS)
        self.image_mean = list(self.image_mean or IMAGE_MEAN)
        self.image_std = list(self.image_std or IMAGE_STD)
        if self.max_image_tokens is None:
            self.max_image_tokens = self.base_grid**2
        n_llm = self.text_config.num_hidden_layers
        teacher_depth = self.teacher_config.num_hidden_layers if self.teacher_config is not None else None
        if self.lora_layers is None:
            self.lora_layers = teacher_depth if teacher_depth is not None else n_llm
        if self.lora_alpha is None:
            self.lora_alpha = self.lora_rank
        if self.vision_rms_norm_eps is None:  # the teacher's, so a copied patch embedding matches exactly
            teacher_eps = getattr(self.teacher_config, "rms_norm_eps", None)
            self.vision_rms_norm_eps = teacher_eps if teacher_eps is not None else 1e-6
        if self.vision_hidden is None:
            self.vision_hidden = self.teacher_config.hidden_size if self.teacher_config is not None else 1024
        if self.lora_rank > 0 and self.lora_layers > n_llm:
            raise ModelError(
                f"lora_layers={self.lora_layers} but the LLM has only {n_llm} blocks; set lora_layers ≤ {n_llm} "
                "(it defaults to the teacher's depth, so a deeper teacher needs an explicit lora_layers)"
            )
        if self.distill != "none":
            if self.teacher_config is None:
                raise ModelError(f"distill={self.distill!r} needs a teacher; give a teacher or set distill: none")
            if self.lora_layers > n_llm or self.lora_layers > teacher_depth or self.lora_layers < 1:
                raise ModelError(
                    f"distillation pairs LLM block i with teacher block i for i = 1..lora_layers, but "
                    f"lora_layers={self.lora_layers}, the LLM has {n_llm} blocks and the teacher {teacher_depth}; "
                    f"set 1 ≤ lora_layers ≤ {min(n_llm, teacher_depth)} or distill: none"
                )

    # ----- derived values -----
    @property
    def base_grid(self) -> int:
        """Side of the positional-embedding grid learnt at `image_size`."""
        return self.image_size // self.patch_size

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank if self.lora_rank > 0 else 0.0

    @property
    def distill_blocks(self) -> list[int]:
        """1-based LLM/teacher block indices that are distilled (HF `hidden_states[i]` on both sides)."""
        if self.distill == "blockwise":
            return list(range(1, self.lora_layers + 1))
        if self.distill == "last":
            return [self.lora_layers]
        return []

    def image_grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (rows, cols) an image of `height`×`width` pixels is resized to."""
        if height <= 0 or width <= 0:
            raise ModelError(f"image size {width}x{height} is empty")
        if self.image_resize == "fixed":
            return self.base_grid, self.base_grid
        p, cap = self.patch_size, self.max_image_tokens
        scale = min(1.0, math.sqrt(cap * p * p / (height * width)))
        rows = max(1, round(height * scale / p))
        cols = max(1, round(width * scale / p))
        while rows * cols > cap:  # rounding can overshoot the cap by a row or a column
            if rows >= cols:
                rows -= 1
            else:
                cols -= 1
        return rows, cols

    def num_image_tokens(self, height: int, width: int) -> int:
        """How many placeholder tokens an image of `height`×`width` pixels occupies."""
        rows, cols = self.image_grid(height, width)
        return rows * cols


def _register() -> None:
    from vora_core.model.auto import register_config

    register_config()


_register()
