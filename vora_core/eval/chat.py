"""Inference for people: `generate(...)` with streaming, and the body of `vora chat`.

    from vora_core.eval.chat import generate
    answer = generate("runs/demo/finetune/final", "What colour is the shape?", images=["a.png"],
                      stream=lambda piece: print(piece, end="", flush=True))

Images go before the question, one `<image>` each, unless the question places them itself with
literal `<image>` markers. No image at all is a text-only question. A missing or unreadable image,
or a directory that is not a VoRA model, is a `VoraError` with a message naming it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from vora_core.data.conversations import IMAGE
from vora_core.data.questions import ImageRef
from vora_core.errors import DataError
from vora_core.eval.prompts import open_image
from vora_core.eval.runner import Loaded, cached_model


def _loaded(model: str | Path | Loaded, dtype: str, device: str) -> Loaded:
    if isinstance(model, Loaded):
        return model
    return cached_model(str(Path(model).resolve()), dtype, device)


def _images(images: Sequence[ImageRef | Path | Image.Image]) -> list[Image.Image]:
    out = []
    for ref in images:
        if isinstance(ref, Image.Image):
            out.append(ref.convert("RGB"))
        else:
            out.append(open_image(str(ref) if isinstance(ref, Path) else ref))
    return out


def user_text(question: str, n_images: int) -> str:
    """The user turn: the question's own `<image>` markers, or one per image in front of it."""
    marked = question.count(IMAGE)
    if marked and marked != n_images:
        raise DataError(f"the question has {marked} <image> markers but {n_images} images were given; "
                        "give one image per marker, or no markers at all")
    return question if marked else "\n".join([IMAGE] * n_images + [question])


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        sorted_p[(sorted_p.cumsum(-1) - sorted_p) > top_p] = 0.0  # smallest prefix whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def iter_tokens(model, input_ids: list[int], pixel_values: list[torch.Tensor], max_new_tokens: int,
                stop_ids: Sequence[int], temperature: float = 0.0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> Iterator[int]:
    """Yield new token ids one at a time: one prefill (image-bidirectional), then cached decoding.

    The same forward calls as the model's batched `generate`, for a single prompt; greedy output is
    identical to it."""
    from transformers import DynamicCache

    param = next(model.parameters())
    ids = torch.tensor([input_ids], dtype=torch.long, device=param.device)
    mask = torch.ones_like(ids)
    pixels = [p.to(device=param.device, dtype=param.dtype) for p in pixel_values] or None
    cache = DynamicCache(config=model.config.text_config)
    positions = torch.arange(ids.shape[1], device=ids.device)[None]
    out = model(input_ids=ids, pixel_values=pixels, attention_mask=mask, position_ids=positions,
                past_key_values=cache, use_cache=True, logits_to_keep=1)
    for step in range(max_new_tokens):
        token = _pick(out.logits[:, -1], temperature, top_p, generator)
        value = int(token)
        if value in stop_ids:
            return
        yield value
        if step == max_new_tokens - 1:
            return
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=positions[:, -1:] + step + 1,
                    past_key_values=out.past_key_values, use_cache=True, logits_to_keep=1)


def generate(model: str | Path | Loaded, question: str, images: Sequence[ImageRef | Path | Image.Image] = (), *,
             max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
             stream: Callable[[str], Any] | None = None, dtype: str = "auto", device: str = "auto") -> str:
    """Answer `question` about `images` (paths, encoded bytes or PIL images; none = text only).

    `model` is a VoRA directory (loaded once and kept for the next call) or a loaded model.
    `stream(piece)` receives the answer's text as it is produced. Greedy unless `temperature` > 0.
    """
    pictures = _images(images)  # fail on a bad image before spending time on the model
    text = user_text(question, len(pictures))
    loaded = _loaded(model, dtype, device)
    encoded = loaded.encoder.encode(text, pictures)
    generator = torch.Generator(device=next(loaded.model.parameters()).device).manual_seed(seed) \
        if seed is not None else None
    tokens: list[int] = []
    shown = ""
    for token in iter_tokens(loaded.model, encoded.input_ids, encoded.pixel_values, max_new_tokens,
                             loaded.encoder.stop_ids(), temperature, top_p, generator):
        tokens.append(token)
        decoded = loaded.tokenizer.decode(tokens, skip_special_tokens=True)
        if stream is not None and not decoded.endswith("\ufffd"):  # wait for a character's last byte
            stream(decoded[len(shown):])
            shown = decoded
    answer = loaded.tokenizer.decode(tokens, skip_special_tokens=True)
    if stream is not None and answer != shown:
        stream(answer[len(shown):])
    return answer.strip()


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def chat_command(model: str, question: str, images: Sequence[str] = (), *, max_new_tokens: int = 256,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, device: str = "auto",
                 dtype: str = "auto", echo: Callable[[str], Any] | None = None) -> str:
    """`vora chat MODEL [--image PATH]... "question"`: stream the answer through `echo(text)` (called
    with pieces, then a final newline) and return it. Errors are `VoraError`s for the CLI to print."""
    echo = echo or _write
    for path in images:
        if not Path(path).is_file():
            raise DataError(f"image {path} not found; check the --image path")
    answer = generate(model, question, images, max_new_tokens=max_new_tokens, temperature=temperature,
                      top_p=top_p, seed=seed, stream=echo, dtype=dtype, device=device)
    echo("\n")
    return answer
