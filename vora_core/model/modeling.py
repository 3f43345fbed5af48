"""`VoRAForCausalLM`: a decoder LLM that reads images through one embedding layer and LoRA.

Parameter names (they are also the safetensors keys):
  llm.*               the HF causal LM (Qwen2 / Llama); LoRA'd projections hold `base_layer`,
                      `lora_A.default`, `lora_B.default` (peft, injected in place)
  vision_embedding.*  patch conv, RMSNorm, positional table, projection to the LLM width
  teacher.*           frozen vision teacher (pretraining only; absent after merge)
  aux_heads.<i>.*     distillation head of LLM block i (1-based; pretraining only)

Images: `pixel_values` is a list of [3, H, W] tensors (sizes may differ) or one [N, 3, H, W]
tensor, in the order the images appear in `input_ids` read row by row. Each image already
occupies `num_image_tokens(H, W)` placeholder ids (`config.image_token_id`) in `input_ids`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from vora_core.errors import ModelError
from vora_core.model import document_attention, masks
from vora_core.model.config import VoRAConfig
from vora_core.model.distill import AuxHead, capture_student_blocks, cosine_loss, teacher_targets
from vora_core.model.lora import inject_lora
from vora_core.model.loss import lm_loss_sum
from vora_core.model.vision_embedding import VisionEmbedding, grids_of, init_from_teacher

document_attention.register()  # `sdpa` computes packed rows per document when the forward asks


@dataclass
class VoRAOutput(ModelOutput):
    """`logits` are [B, L, V] (or the last `logits_to_keep` positions) only when no `labels` are given:
    with labels the LM head runs on labelled positions only and just the losses are returned."""

    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    distill_loss: torch.Tensor | None = None
    distill_losses: dict[int, torch.Tensor] | None = None
    num_label_tokens: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: Any = None


def splice_vision(embeds: torch.Tensor, is_image: torch.Tensor, vision: torch.Tensor) -> torch.Tensor:
    """Put the vision tokens (reading order) into the placeholder slots: one masked_scatter, no loop, no sync."""
    return embeds.masked_scatter(is_image.unsqueeze(-1), vision)


class VoRAPreTrainedModel(PreTrainedModel):
    config: VoRAConfig
    config_class = VoRAConfig
    base_model_prefix = "vora"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["VisionEmbedding", "AuxHead"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_flash_attn = False  # varlen flash kernels cannot express image-bidirectional blocks

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, VisionEmbedding):
            init.normal_(module.pos_embed, mean=0.0, std=self.config.initializer_range)


class VoRAForCausalLM(VoRAPreTrainedModel):
    def __init__(self, config: VoRAConfig, llm: PreTrainedModel | None = None,
                 teacher: PreTrainedModel | None = None) -> None:
        super().__init__(config)
        # HF resolves the implementation on the top config only; push it down so the LLM (and the
        # teacher) never run with None (= unmasked eager attention).
        config._attn_implementation = config._attn_implementation
        self.llm = llm if llm is not None else AutoModelForCausalLM.from_config(config.text_config)
        llm_hidden = config.text_config.hidden_size
        self.vision_embedding = VisionEmbedding(
            config.patch_size, config.vision_hidden, llm_hidden, config.base_grid, config.vision_rms_norm_eps
        )
        distilling = config.distill != "none"
        self.teacher = None
        self.aux_heads = None
        if distilling:
            self.teacher = teacher if teacher is not None else AutoModel.from_config(config.teacher_config)
            self.teacher.requires_grad_(False)
            self.teacher.eval()
            t_hidden = config.teacher_config.hidden_size
            self.aux_heads = nn.ModuleDict(
                {str(i): AuxHead(llm_hidden, t_hidden, _llm_eps(config)) for i in config.distill_blocks}
            )
        self.post_init()
        # After post_init: HF's initialiser would otherwise re-draw LoRA B (peft starts it at zero).
        if config.lora_rank > 0:
            inject_lora(self.llm, config.lora_rank, config.lora_alpha, config.lora_layers, config.lora_targets)

    # ----- construction -----
    @classmethod
    def from_parts(cls, llm: str | Path | PreTrainedModel, teacher: str | Path | PreTrainedModel | None = None, *,
                   dtype: torch.dtype | None = None, attn_implementation: str = "sdpa",
                   **settings: Any) -> VoRAForCausalLM:
        """A fresh VoRA model for pretraining from a pretrained LLM and teacher (paths, hub names or models).

        `settings` are `VoRAConfig` fields (lora_rank, lora_layers, distill, image_size, ...). The vision
        embedding is initialised from the teacher's patch embedding when the teacher is AIMv2 and the
        shapes agree; LoRA B starts at zero, so the LLM's text outputs are unchanged at step 0.
        """
        llm_model = llm if isinstance(llm, PreTrainedModel) else _load(AutoModelForCausalLM, llm, dtype,
                                                                        attn_implementation)
        teacher_model = None
        if teacher is not None:
            teacher_model = teacher if isinstance(teacher, PreTrainedModel) else _load(AutoModel, teacher, dtype,
                                                                                        attn_implementation)
        if settings.get("image_token_id") is None and not isinstance(llm, PreTrainedModel):
            settings["image_token_id"] = _token_id_from_dir(llm, settings.get("image_token", "<|image_pad|>"))
        teacher_config = teacher_model.config if teacher_model is not None else None
        attn = llm_model.config._attn_implementation or attn_implementation
        config = VoRAConfig(text_config=llm_model.config, teacher_config=teacher_config, attn_implementation=attn,
                            **settings)
        model = cls(config, llm=llm_model, teacher=teacher_model)
        if teacher_model is not None:
            size = teacher_model.config.image_size
            init_from_teacher(model.vision_embedding, teacher_model, size[0] if isinstance(size, list) else size)
        return model.to(dtype) if dtype is not None else model

    # ----- HF plumbing -----
    def get_input_embeddings(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.llm.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.llm.get_output_embeddings()

    def get_decoder(self) -> nn.Module:
        return self.llm.get_decoder()

    def train(self, mode: bool = True) -> VoRAForCausalLM:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen teacher: no dropout, ever
        return self

    def num_image_tokens(self, height: int, width: int) -> int:
        return self.config.num_image_tokens(height, width)

    # ----- forward -----
    def forward(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | list[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        distill: bool | None = None,
        **kwargs: Any,
    ) -> VoRAOutput:
        """One forward pass.

        input_ids [B, Lq]: text ids with each image's run of `config.image_token_id` placeholders.
        pixel_values: the batch's images in reading order (see module docstring).
        attention_mask [B, Lkv]: 1 = token, 0 = padding (left or right). With a cache, Lkv covers
            past + new tokens (HF convention).
        doc_ids [B, Lkv]: document id per token for packed rows (−1 = padding); documents never see
            each other. position_ids default to positions inside each document.
        labels [B, Lq]: next-token targets aligned with input_ids (shifted inside), −100 = ignore;
            a target in another document than its predictor is ignored too.
        distill: compute the distillation loss (default: when labels are given and a teacher exists).
        """
        config = self.config
        llm_dtype = self.llm.get_input_embeddings().weight.dtype
        embeds = self.llm.get_input_embeddings()(input_ids)
        batch, q_len = input_ids.shape
        device = input_ids.device
        past_len = past_key_values.get_seq_length() if past_key_values is not None else 0
        kv_len = past_len + q_len

        has_images = pixel_values is not None and len(pixel_values) > 0
        is_image = None
        image_ids = None
        if has_images:
            if config.image_token_id is None:
                raise ModelError("config.image_token_id is not set; set it to the tokenizer's image placeholder id")
            grids = grids_of(pixel_values, config.patch_size)
            counts = torch.tensor([r * c for r, c in grids], dtype=torch.long)
            masks.check_image_token_count(input_ids, config.image_token_id, int(counts.sum()))
            vision = self.vision_embedding(pixel_values).to(embeds.dtype)
            is_image = input_ids == config.image_token_id
            embeds = splice_vision(embeds, is_image, vision)
            image_ids = masks.image_ids_from_input_ids(input_ids, config.image_token_id, counts)

        packed = doc_ids is not None
        needs_mask = packed or attention_mask is not None or (has_images and config.vision_attention == "bidirectional")
        docs = None
        segments = None  # packed rows regrouped per document for SDPA (document_attention)
        if needs_mask:
            docs = masks.padding_doc_ids(attention_mask, doc_ids, torch.Size((batch, kv_len)), device)
            if docs.shape[-1] != kv_len:
                raise ModelError(f"attention_mask/doc_ids cover {docs.shape[-1]} tokens but past + new = {kv_len}")
            if image_ids is None:
                limit = torch.arange(q_len, device=device).expand(batch, q_len)
            else:
                limit = masks.visibility_limit(image_ids, len(grids), config.vision_attention == "bidirectional")
            attn_implementation = config.text_config._attn_implementation
            mask = masks.build_attention_mask(docs, limit + past_len, attn_implementation, llm_dtype)
            if (packed and past_len == 0 and attn_implementation == "sdpa"
                    and not getattr(self.llm.get_decoder().layers[0], "_vora_compiled", False)):
                segments = document_attention.document_segments(docs, limit, llm_dtype,
                                                                config.per_document_attention)
            if position_ids is None:
                position_ids = masks.positions_from_doc_ids(docs)[:, past_len:]
        else:
            mask = None
            if position_ids is None:
                position_ids = torch.arange(past_len, kv_len, device=device).unsqueeze(0).expand(batch, -1)

        distilling = (
            self.teacher is not None and has_images and (distill if distill is not None else labels is not None)
        )
        blocks = config.distill_blocks if distilling else []
        decoder = self.llm.get_decoder()
        capture = capture_student_blocks(decoder, blocks) if distilling else nullcontext({})
        with capture as student_blocks:
            out = decoder(
                inputs_embeds=embeds,
                attention_mask=mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=use_cache if use_cache is not None else past_key_values is not None,
                **({"document_segments": segments} if segments is not None else {}),
            )
        hidden = out.last_hidden_state
        lm_head = self.llm.get_output_embeddings()

        result = VoRAOutput(past_key_values=out.past_key_values)
        if labels is None:
            kept = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
            result.logits = lm_head(kept)
            return result

        targets = labels[:, 1:].to(device)
        valid = targets != -100
        if packed and docs is not None:
            valid = valid & (docs[:, 1:] == docs[:, :-1])
        n_valid = valid.sum()
        # LM head on labelled positions only, `lm_loss_chunk` of them at a time (vora_core.model.loss)
        lm_sum = lm_loss_sum(hidden[:, :-1][valid], lm_head.weight, lm_head.bias, targets[valid],
                             config.lm_loss_chunk)
        lm_loss = lm_sum / n_valid.clamp(min=1)
        result.lm_loss = lm_loss
        result.num_label_tokens = n_valid
        loss = lm_loss

        if distilling:
            t_tokens = teacher_targets(self.teacher, config.teacher_config, pixel_values, config.patch_size, blocks)
            where = is_image.flatten().nonzero().squeeze(1)
            per_block = {}
            for i in blocks:
                student = student_blocks[i].flatten(0, 1).index_select(0, where)
                per_block[i] = cosine_loss(self.aux_heads[str(i)](student), t_tokens[i].to(student.device))
            result.distill_losses = per_block
            result.distill_loss = torch.stack(list(per_block.values())).mean()
            loss = loss + config.distill_weight * result.distill_loss
        elif self.training and not has_images:
            # Text-only batch: tie the vision-side trainables to the graph with a zero so that
            # DDP sees every trainable parameter used (no find_unused_parameters needed).
            zero = sum((p.sum() for p in self._vision_side_params()), torch.zeros((), device=device)) * 0.0
            if self.aux_heads is not None:
                result.distill_loss = zero
            loss = loss + zero
        result.loss = loss
        return result

    def _vision_side_params(self) -> list[nn.Parameter]:
        params = list(self.vision_embedding.parameters())
        if self.aux_heads is not None:
            params += list(self.aux_heads.parameters())
        return [p for p in params if p.requires_grad]

    @torch.no_grad()
    def generate(self, input_ids: torch.LongTensor, **kwargs: Any) -> torch.LongTensor:
        """Greedy or sampled decoding with a KV cache; see `vora_core.model.generation.generate`."""
        from vora_core.model.generation import generate

        return generate(self, input_ids, **kwargs)


def _llm_eps(config: VoRAConfig) -> float:
    return getattr(config.text_config, "rms_norm_eps", None) or 1e-6


def _load(auto_cls, name_or_path: str | Path, dtype: torch.dtype | None, attn_implementation: str):
    path = Path(name_or_path)
    looks_like_hub_id = (not path.is_absolute() and str(name_or_path).count("/") == 1
                         and not str(name_or_path).startswith("."))
    if not path.exists() and not looks_like_hub_id:
        raise ModelError(f"model directory {path} does not exist; build it first (vora_core.model.tiny) "
                         "or fix the path")
    return auto_cls.from_pretrained(str(name_or_path), dtype=dtype, attn_implementation=attn_implementation)


def _token_id_from_dir(name_or_path: str | Path, token: str) -> int | None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    except (OSError, ValueError):
        return None
    token_id = tokenizer.convert_tokens_to_ids(token)
    return token_id if token_id is not None and token_id != tokenizer.unk_token_id else None


def load_vora(path: str | Path, *, dtype: torch.dtype | None = None, attn_implementation: str = "sdpa",
              device: str | torch.device | None = None) -> VoRAForCausalLM:
    """Load a VoRA directory (pretrained with LoRA, or merged) with HF's own `from_pretrained`."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise ModelError(f"{path} is not a model directory (no config.json); run the stage that writes it first")
    model = VoRAForCausalLM.from_pretrained(str(path), dtype=dtype, attn_implementation=attn_implementation)
    return model.to(device) if device is not None else model


def save_vora(model: VoRAForCausalLM, out_dir: str | Path, tokenizer=None) -> Path:
    """Save model (safetensors), tokenizer and image processor config as one HF directory."""
    from vora_core.model.image_processing import save_image_processor

    out = Path(out_dir)
    model.save_pretrained(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    save_image_processor(model.config, out)
    return out


def _register() -> None:
    from vora_core.model.auto import register_model

    register_model()


_register()
