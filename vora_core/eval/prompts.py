"""Turn a question with images into model inputs: chat template, image placeholders, pixels.

The user turn's text holds one literal `<image>` per image (vora_core.data.questions.prompt_text). The chat template
renders the conversation with the generation prompt; each `<image>` then becomes
`<|vision_start|>` + `<|image_pad|>` × num_image_tokens(h, w) + `<|vision_end|>` (the start/end
markers only when the tokenizer has them), and each image becomes a normalised [3, H, W] tensor on
the model's patch grid (`vora_core.model.image_processing.preprocess_image`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from vora_core.data.conversations import IMAGE
from vora_core.data.images import open_rgb
from vora_core.data.questions import ImageRef
from vora_core.errors import DataError

VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"


def open_image(ref: ImageRef) -> Image.Image:
    """A path or encoded bytes → RGB image; a missing or unreadable file is a `DataError` naming it."""
    if isinstance(ref, bytes):
        return open_rgb(ref)
    path = Path(ref)
    if not path.is_file():
        raise DataError(f"image {path} not found; check the path")
    try:
        return open_rgb(path.read_bytes())
    except DataError as e:
        raise DataError(f"image {path} is unreadable: {e}") from None


@dataclass
class Encoded:
    input_ids: list[int]
    pixel_values: list[torch.Tensor]


class PromptEncoder:
    """Encodes prompts for one VoRA model (its tokenizer and config)."""

    def __init__(self, tokenizer, config) -> None:
        from vora_core.model.image_processing import preprocess_image

        self.tokenizer = tokenizer
        self.config = config
        self._preprocess = preprocess_image
        self.image_token_id = config.image_token_id
        if self.image_token_id is None:
            raise DataError("the model config has no image_token_id; it cannot read images")
        vocab = tokenizer.get_vocab()
        self.wrap = (vocab.get(VISION_START), vocab.get(VISION_END))
        if None in self.wrap:
            self.wrap = (None, None)

    def render(self, user_text: str) -> str:
        messages = [{"role": "user", "content": user_text}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, user_text: str, images: list[Image.Image]) -> Encoded:
        """Token ids of the rendered conversation (ready for generation) and the image tensors."""
        pieces = self.render(user_text).split(IMAGE)
        if len(pieces) - 1 != len(images):
            raise DataError(f"the prompt has {len(pieces) - 1} <image> markers but {len(images)} images were given")
        ids: list[int] = []
        pixels = []
        for k, piece in enumerate(pieces):
            ids += self.tokenizer.encode(piece, add_special_tokens=False) if piece else []
            if k < len(images):
                tensor = self._preprocess(images[k], self.config)
                n = (tensor.shape[1] // self.config.patch_size) * (tensor.shape[2] // self.config.patch_size)
                start, end = self.wrap
                ids += ([start] if start is not None else []) + [self.image_token_id] * n
                ids += [end] if end is not None else []
                pixels.append(tensor)
        return Encoded(ids, pixels)

    def stop_ids(self) -> list[int]:
        """Tokens that end an answer: the tokenizer's eos (`<|im_end|>` in ChatML) and the LLM's."""
        ids = {self.tokenizer.eos_token_id}
        eos = self.config.text_config.eos_token_id
        ids.update(eos if isinstance(eos, list) else [eos])
        return sorted(i for i in ids if i is not None)

    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.stop_ids()[0]


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] ids and attention mask, padded on the left (generation's layout)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask
