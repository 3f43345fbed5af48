"""The VoRA model: an LLM that sees through one vision embedding + LoRA (arXiv 2503.20680).

Public API (imported lazily, so `import vora_core.model` does not load torch):

config      VoRAConfig(text_config=..., teacher_config=..., lora_rank=1024, lora_alpha=None (= rank),
                       lora_layers=None (= teacher depth), lora_targets=None (the 7 projections),
                       vision_attention="bidirectional"|"causal", distill="blockwise"|"last"|"none",
                       distill_weight=1.0, image_size=448, patch_size=14, vision_hidden=None,
                       max_image_tokens=None, image_resize="fixed"|"native", image_token_id=...)
              .num_image_tokens(height, width) -> int    .image_grid(height, width) -> (rows, cols)
              .distill_blocks -> list[int] (1-based)      .image_token_id (placeholder id)
modeling    VoRAForCausalLM(config)                       (random init from configs)
              .from_parts(llm, teacher=None, *, dtype=None, attn_implementation="sdpa", **config_fields)
              .forward(input_ids, pixel_values=None, attention_mask=None, doc_ids=None, position_ids=None,
                       labels=None, past_key_values=None, use_cache=None, logits_to_keep=0, distill=None)
                -> VoRAOutput(loss, lm_loss, distill_loss, distill_losses {block: loss}, num_label_tokens,
                              logits (only without labels), past_key_values)
                pixel_values: list of [3, H, W] (sizes may differ) or [N, 3, H, W], in reading order.
              .generate(input_ids, attention_mask=None, pixel_values=None, max_new_tokens=64,
                        eos_token_id=None, pad_token_id=None, do_sample=False, temperature=1.0, top_p=1.0)
                -> new token ids [B, T] (left-padded prompts)
              .num_image_tokens(height, width)
            load_vora(path, *, dtype=None, attn_implementation="sdpa", device=None) -> VoRAForCausalLM
            save_vora(model, out_dir, tokenizer=None) -> Path   (safetensors + tokenizer + image processor)
lora        configure_trainable(model, "pretrain"|"finetune") -> {"trainable": n, "frozen": n}
merge       merge_lora(pretrain_dir, out_dir, dtype=None, overwrite=False) -> Path   (streamed, fp32 math)
image_processing  preprocess_image(pil_image, config) -> Tensor[3, H, W]; save_image_processor(config, dir)
generation  generate(model, input_ids, ...)   (what VoRAForCausalLM.generate calls)
masks       dense_mask / block_mask / visibility_limit / image_ids_from_input_ids / positions_from_doc_ids
tiny        train_tokenizer(texts, vocab_size=1024, seed=0); build_tiny_llm(out_dir, tokenizer, arch="qwen2", ...);
            build_tiny_teacher(out_dir, image_size=64, patch_size=8, ...);
            build_tiny_captioner(out_dir, tokenizer, ...); build_tiny_vora(out_dir, llm_dir, teacher_dir, **fields)

`import vora_core` registers model_type "vora" with AutoConfig / AutoModelForCausalLM (see
`vora_core.model.auto`), so `AutoModelForCausalLM.from_pretrained(dir)` works without remote code.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VoRAConfig": "config",
    "VoRAForCausalLM": "modeling",
    "VoRAOutput": "modeling",
    "load_vora": "modeling",
    "save_vora": "modeling",
    "configure_trainable": "lora",
    "merge_lora": "merge",
    "generate": "generation",
    "preprocess_image": "image_processing",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"vora_core.model.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'vora_core.model' has no attribute {name!r}")
