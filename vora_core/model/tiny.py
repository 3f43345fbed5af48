"""Tiny, seeded models built from configs and saved as ordinary HF directories (no downloads).

The demo and the tests load these exactly as a real run loads Qwen2.5 / AIMv2 / Qwen2-VL: with
`from_pretrained` on a directory. Only the sizes differ.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
DEFAULT_SYSTEM = "You are a helpful assistant."

# Qwen-style ChatML. String contents are used as is (the sequence builder expands a literal
# "<image>"); list contents ({"type": "image"} / {"type": "text"}) follow Qwen2-VL's layout.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024, seed: int = 0):
    """Byte-level BPE trained on `texts` (about a second for a few MB) with Qwen's special tokens.

    BPE training is deterministic for a given corpus; `seed` is accepted for a uniform interface.
    Returns a `PreTrainedTokenizerFast` with eos `<|im_end|>`, pad `<|endoftext|>` and a ChatML template.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    del seed
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=SPECIAL_TOKENS[3:],
        model_max_length=32768,
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _ids(tokenizer) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}


def build_tiny_llm(out_dir: str | Path, tokenizer, *, arch: str = "qwen2", hidden_size: int = 64,
                   num_hidden_layers: int = 4, num_attention_heads: int = 4, num_key_value_heads: int = 2,
                   intermediate_size: int = 128, max_position_embeddings: int = 4096,
                   tie_word_embeddings: bool = True, seed: int = 0) -> Path:
    """A seeded Qwen2 (or Llama, `arch="llama"`) causal LM + its tokenizer, saved to `out_dir`."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    ids = _ids(tokenizer)
    kwargs: dict[str, Any] = dict(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads, max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings, bos_token_id=None, eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"], rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    torch.manual_seed(seed)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**kwargs))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**kwargs))
    else:
        raise ValueError(f"arch={arch!r} is not 'qwen2' or 'llama'")
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """[grid², dim] positions in reading order: sin/cos of the row in the first half, of the column in
    the second, at dim/4 geometric frequencies each."""
    quarter = dim // 4
    freq = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float32) / max(quarter, 1)))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                                indexing="ij")
    parts = [f(axis.reshape(-1, 1) * freq) for axis in (rows, cols) for f in (torch.sin, torch.cos)]
    table = torch.cat(parts, dim=1)
    return torch.nn.functional.pad(table, (0, dim - table.shape[1]))


def build_tiny_teacher(out_dir: str | Path, image_size: int = 64, patch_size: int = 8, *, hidden_size: int = 32,
                       num_hidden_layers: int = 2, num_attention_heads: int = 2, intermediate_size: int = 64,
                       seed: int = 0) -> Path:
    """A seeded AIMv2 vision tower (`transformers.Aimv2VisionModel`) + a CLIP image processor config."""
    from transformers import Aimv2VisionConfig, Aimv2VisionModel, CLIPImageProcessor

    config = Aimv2VisionConfig(
        hidden_size=hidden_size, intermediate_size=intermediate_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, image_size=image_size, patch_size=patch_size, use_head=False,
    )
    torch.manual_seed(seed)
    model = Aimv2VisionModel(config)
    # A trained AIMv2's position table is as strong as its patch features; a random init (std 0.02) is
    # ~40x weaker, and VoRA copies it into the vision embedding, where it would hide every patch's
    # place from a tiny LLM trained for minutes. A 2-D sin-cos table at unit scale stands in for it.
    with torch.no_grad():
        table = model.embeddings.position_embedding.weight
        table.copy_(sincos_2d(image_size // patch_size, hidden_size).to(table.dtype))
    out = Path(out_dir)
    model.save_pretrained(out)
    CLIPImageProcessor(size={"height": image_size, "width": image_size}, do_center_crop=False).save_pretrained(out)
    return out


def build_tiny_captioner(out_dir: str | Path, tokenizer, *, hidden_size: int = 64, num_hidden_layers: int = 2,
                         num_attention_heads: int = 4, num_key_value_heads: int = 2, intermediate_size: int = 128,
                         vision_depth: int = 2, vision_embed_dim: int = 32, vision_heads: int = 2,
                         min_pixels: int = 56 * 56, max_pixels: int = 112 * 112, seed: int = 0) -> Path:
    """A seeded Qwen2-VL (`Qwen2VLForConditionalGeneration`) + tokenizer + image processor config.

    No `Qwen2VLProcessor` (its video processor needs torchvision): callers load the tokenizer and
    `AutoImageProcessor` separately and expand `<|image_pad|>` by `grid_t·grid_h·grid_w / merge²`.
    """
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    ids = _ids(tokenizer)
    head_dim = hidden_size // num_attention_heads
    half = head_dim // 2
    section = [half - 2 * (half // 3), half // 3, half // 3]  # temporal, height, width rotary split
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
            num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
            num_key_value_heads=num_key_value_heads, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
            bos_token_id=None, eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(depth=vision_depth, embed_dim=vision_embed_dim, hidden_size=hidden_size,
                           num_heads=vision_heads, patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels).save_pretrained(out)
    return out


def build_tiny_vora(out_dir: str | Path, llm_dir: str | Path, teacher_dir: str | Path | None, *,
                    seed: int = 0, **settings: Any) -> Path:
    """A fresh VoRA pretraining directory from a tiny LLM and teacher (settings: `VoRAConfig` fields)."""
    from transformers import AutoTokenizer

    from vora_core.model.modeling import VoRAForCausalLM, save_vora

    torch.manual_seed(seed)
    model = VoRAForCausalLM.from_parts(llm_dir, teacher_dir, dtype=torch.float32, **settings)
    tokenizer = AutoTokenizer.from_pretrained(str(llm_dir))
    return save_vora(model, out_dir, tokenizer)
