"""Caption prompts: the deterministic choice of a prompt per image and the Qwen2-VL chat prompt."""

from __future__ import annotations

import hashlib

# Qwen2-VL's chat format. The image is one `<|image_pad|>` for vLLM (which expands it to the image's
# token count itself) and `n` of them for transformers (where we expand it: no processor here).
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"


def sample_seed(seed: int, sample_id: str) -> int:
    """A 31-bit seed that depends only on the catalog seed and the sample (not on run order)."""
    digest = hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF


def choose_prompt(prompts: list[str], seed: int, sample_id: str) -> str:
    return prompts[sample_seed(seed, sample_id) % len(prompts)]


def chat_prompt(
    prompt: str,
    system: str | None = "You are a helpful assistant.",
    n_image_tokens: int = 1,
    vision_start: str = VISION_START,
    vision_end: str = VISION_END,
    image_pad: str = IMAGE_PAD,
) -> str:
    """The text Qwen2-VL's chat template renders for one user turn holding an image and `prompt`,
    ending with the assistant header so generation writes the answer."""
    head = f"{IM_START}system\n{system}{IM_END}\n" if system else ""
    image = f"{vision_start}{image_pad * n_image_tokens}{vision_end}"
    return f"{head}{IM_START}user\n{image}{prompt}{IM_END}\n{IM_START}assistant\n"
