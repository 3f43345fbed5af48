"""Conversations → token ids + labels: the tokenizer's chat template, label masks, `<image>` expansion.

A conversation is rendered once with the tokenizer's own chat template. Each message's content is
then located in the rendered text (it must appear verbatim, followed by the end token `<|im_end|>`
— true for Qwen's ChatML template and any template that does not rewrite contents); assistant
contents *and their end token* are the label spans. The text is split at each literal `<image>` and
every piece is tokenised with character offsets (the evaluator encodes prompts piece by piece the
same way, so training and inference see the same ids); a token is labelled when it overlaps a label
span. Each `<image>` becomes `<|vision_start|>` + `<|image_pad|>` × n + `<|vision_end|>` (the
markers only when the tokenizer has them), n being that image's token count from its grid.

Truncation cuts at `max_len` tokens but never inside an image: a cut that would land in an image's
span moves to the span's start, dropping the image. A sample with an image whose span alone exceeds
`max_len`, with no label left after truncation, or whose `<image>` markers do not match its images
is rejected with a `SkipSample` carrying the reason (the caller counts them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from vora_core.data.conversations import IMAGE
from vora_core.errors import DataError

IGNORE = -100
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
ROLES = ("system", "user", "assistant")


class SkipSample(Exception):
    """A sample that cannot become a training sequence; `reason` is a short counter key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class TokenSequence:
    """One sample's tokens. `image_spans[k]` = [start, end) of image k's ids (markers included)."""

    input_ids: np.ndarray  # int64 [L]
    labels: np.ndarray  # int64 [L], IGNORE where not trained
    image_spans: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_images(self) -> int:
        return len(self.image_spans)

    @property
    def num_labels(self) -> int:
        return int((self.labels != IGNORE).sum())


class ChatEncoder:
    """Builds `TokenSequence`s for one tokenizer (and one image placeholder id)."""

    def __init__(self, tokenizer, image_token_id: int, system_prompt: str | None = None,
                 end_token: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.image_token_id = int(image_token_id)
        self.system_prompt = system_prompt
        self.end_token = end_token or tokenizer.eos_token
        if not self.end_token:
            raise DataError("the tokenizer has no eos token; set the chat end token explicitly (end_token)")
        if getattr(tokenizer, "chat_template", None) is None:
            raise DataError("the tokenizer has no chat template; use an instruct tokenizer (Qwen ChatML)")
        vocab = tokenizer.get_vocab()
        start, end = vocab.get(VISION_START), vocab.get(VISION_END)
        self.wrap = (start, end) if start is not None and end is not None else (None, None)

    # ----- rendering -----
    def render(self, messages: Sequence[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and its label character spans (assistant content + end token)."""
        messages = [dict(m) for m in messages]
        for m in messages:
            if m.get("role") not in ROLES:
                raise SkipSample("bad_role", f"role {m.get('role')!r} is not one of {ROLES}")
            if not isinstance(m.get("content"), str):
                raise SkipSample("bad_content", "message content must be a string")
        if not any(m["role"] == "assistant" for m in messages):
            raise SkipSample("no_assistant_turn")
        if self.system_prompt is not None and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False)
        spans, cursor = [], 0
        for m in messages:
            needle = m["content"] + self.end_token
            at = text.find(needle, cursor)
            if at < 0:
                raise DataError(
                    f"the chat template does not render a {m['role']} message's content verbatim followed by "
                    f"{self.end_token!r}; this builder needs a ChatML-style template (Qwen)"
                )
            cursor = at + len(needle)
            if m["role"] == "assistant":
                spans.append((at, cursor))
        return text, spans

    # ----- encoding -----
    def encode(self, messages: Sequence[dict], image_tokens: Sequence[int]) -> TokenSequence:
        """Token ids and labels; `image_tokens[k]` = placeholder count of the k-th `<image>`."""
        text, spans = self.render(messages)
        pieces = text.split(IMAGE)
        if len(pieces) - 1 != len(image_tokens):
            raise SkipSample("image_count_mismatch",
                             f"{len(pieces) - 1} <image> markers but {len(image_tokens)} images")
        bounds = np.asarray([b for span in spans for b in span], dtype=np.int64)
        ids_parts, label_parts, image_spans = [], [], []
        base, length = 0, 0
        start_id, end_id = self.wrap
        for k, piece in enumerate(pieces):
            if piece:
                enc = self.tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
                ids = np.asarray(enc["input_ids"], dtype=np.int64)
                offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2) + base
                labelled = _overlaps(offsets, bounds)
                ids_parts.append(ids)
                label_parts.append(np.where(labelled, ids, IGNORE))
                length += len(ids)
            base += len(piece) + len(IMAGE)
            if k < len(image_tokens):
                n = int(image_tokens[k])
                if n <= 0:
                    raise SkipSample("empty_image", f"image {k} has {n} tokens")
                ids = [self.image_token_id] * n
                if start_id is not None:
                    ids = [start_id, *ids, end_id]
                ids_arr = np.asarray(ids, dtype=np.int64)
                ids_parts.append(ids_arr)
                label_parts.append(np.full(len(ids_arr), IGNORE, dtype=np.int64))
                image_spans.append((length, length + len(ids_arr)))
                length += len(ids_arr)
        input_ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, dtype=np.int64)
        labels = np.concatenate(label_parts) if label_parts else np.zeros(0, dtype=np.int64)
        return TokenSequence(input_ids, labels, image_spans)

    def build(self, messages: Sequence[dict], image_tokens: Sequence[int], max_len: int) -> TokenSequence:
        """`encode` then `truncate`: what the loader and the sample index use."""
        return truncate(self.encode(messages, image_tokens), max_len)


def _overlaps(offsets: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Per token [start, end): does it overlap one of the sorted, disjoint spans in `bounds` (s0,e0,s1,e1…)?"""
    if len(bounds) == 0:
        return np.zeros(len(offsets), dtype=bool)
    starts, ends = offsets[:, 0], offsets[:, 1]
    after = np.searchsorted(bounds, starts, side="right")  # odd: the token starts inside a span
    inside = (after % 2) == 1
    nxt = np.minimum(after, len(bounds) - 1)  # even: the next span's start; does the token reach into it?
    reaches = ((after % 2) == 0) & (after < len(bounds)) & (ends > bounds[nxt])
    return inside | reaches


def truncate(seq: TokenSequence, max_len: int) -> TokenSequence:
    """Cut to `max_len` tokens, never inside an image (see module docstring)."""
    for start, end in seq.image_spans:
        if end - start > max_len:
            raise SkipSample("image_exceeds_seq_len", f"an image takes {end - start} tokens > seq_len {max_len}")
    if len(seq) > max_len:
        cut = max_len
        for start, end in seq.image_spans:
            if start < cut < end:
                cut = start
                break
        seq = TokenSequence(seq.input_ids[:cut], seq.labels[:cut], [s for s in seq.image_spans if s[1] <= cut])
    if seq.num_labels == 0:
        raise SkipSample("no_labels", "no assistant token left within seq_len")
    return seq
