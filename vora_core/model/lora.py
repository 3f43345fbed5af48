"""LoRA on the LLM's first N blocks (through `peft`) and the trainable set of each stage."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from vora_core.errors import ModelError

if TYPE_CHECKING:
    from vora_core.model.modeling import VoRAForCausalLM

LORA_MARKERS = (".lora_A.", ".lora_B.", ".lora_embedding_A", ".lora_embedding_B", ".lora_magnitude_vector")


def inject_lora(llm: nn.Module, rank: int, alpha: int, layers: int, targets: list[str]) -> None:
    """Wrap the seven projections of blocks 0..layers-1 in peft LoRA layers, in place.

    r = rank, alpha = rank (scale 1 as the paper), dropout 0, no bias: the base model keeps its
    exact parameter set (no LoRA-added biases). B starts at zero, so the model is unchanged at init.
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        bias="none",
        target_modules=list(targets),
        layers_to_transform=list(range(layers)),
        layers_pattern="layers",
    )
    inject_adapter_in_model(config, llm)
    # peft leaves its config on the module; the VoRA config is the single source of truth.
    if hasattr(llm, "peft_config"):
        del llm.peft_config
    wrapped = {n.split(".")[-1] for n, m in llm.named_modules() if hasattr(m, "lora_A")}
    missing = set(targets) - wrapped
    if layers > 0 and missing:
        raise ModelError(f"LoRA targets {sorted(missing)} are not modules of this LLM; check lora_targets")


def is_lora_name(name: str) -> bool:
    return any(marker in name for marker in LORA_MARKERS)


def has_lora(model: nn.Module) -> bool:
    return any(is_lora_name(n) for n, _ in model.named_parameters())


def configure_trainable(model: VoRAForCausalLM, stage: Literal["pretrain", "finetune"]) -> dict[str, int]:
    """Set `requires_grad` for a stage and return the counts {trainable, frozen}.

    pretrain: LoRA A/B + vision embedding + distillation heads; the base LLM and teacher frozen. A model
    built with lora_rank 0 trains every LLM weight instead (the paper's full-parameter ablation).
    finetune: every LLM parameter + vision embedding (expects a merged model: no LoRA, no teacher).
    """
    if stage not in ("pretrain", "finetune"):
        raise ModelError(f"stage={stage!r} is not 'pretrain' or 'finetune'")
    if stage == "finetune" and has_lora(model):
        raise ModelError("finetune trains the full LLM but this model still has LoRA layers; merge it first "
                         "(vora_core.model.merge.merge_lora) and finetune the merged directory")
    lora = has_lora(model)
    if stage == "pretrain" and not lora and model.config.lora_rank > 0:
        raise ModelError(f"pretrain: lora_rank is {model.config.lora_rank} but the model has no LoRA layers")
    for name, param in model.named_parameters():
        if name.startswith("teacher."):
            train = False
        elif name.startswith(("vision_embedding.", "aux_heads.")):
            train = True
        elif stage == "pretrain" and lora:
            train = is_lora_name(name)
        else:
            train = name.startswith("llm.")
        param.requires_grad_(train)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"trainable": trainable, "frozen": frozen}


@torch.no_grad()
def lora_delta(weight_a: torch.Tensor, weight_b: torch.Tensor, scale: float) -> torch.Tensor:
    """(B·A)·scale in fp32: the exact update LoRA adds to W."""
    return (weight_b.float() @ weight_a.float()) * scale
