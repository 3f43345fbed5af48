"""Caption quality: text cleaning and flags. Captions are flagged, never silently dropped."""

from __future__ import annotations

import re
import unicodedata

from vora_core.catalog import CaptionQualitySettings

EMPTY = "empty"
TRUNCATED = "truncated"
REPETITIVE = "repetitive"
INVALID_TEXT = "invalid_text"
UNDECODABLE_IMAGE = "undecodable_image"
REQUEST_REJECTED = "request_rejected"
FLAGS = (EMPTY, TRUNCATED, REPETITIVE, INVALID_TEXT, UNDECODABLE_IMAGE, REQUEST_REJECTED)

_WORD = re.compile(r"\w+", re.UNICODE)
_JOINERS = "\u200c\u200d"  # zero-width (non-)joiners are part of emoji and some scripts


def _bad_code_point(ch: str) -> bool:
    o = ord(ch)
    return ch == "\ufffd" or 0xFDD0 <= o <= 0xFDEF or (o & 0xFFFE) == 0xFFFE  # replacement, non-characters


def clean_text(text: str) -> tuple[str, bool]:
    """Remove what must not reach a parquet file or a training sample: lone surrogates (invalid UTF-8
    that came through JSON escapes), U+FFFD (bytes a tokenizer could not decode), control and format
    characters other than newline, tab and zero-width joiners, and non-characters.

    Returns (clean text, whether anything was removed)."""
    if "\ufffd" not in text and text.replace("\n", " ").replace("\t", " ").isprintable():
        return text.strip(), False  # the common case, at C speed
    kept = []
    removed = False
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "\n\t" or not (cat in ("Cc", "Cs") or (cat == "Cf" and ch not in _JOINERS) or _bad_code_point(ch)):
            kept.append(ch)
        else:
            removed = True
    return "".join(kept).strip(), removed


def repeated_ngram_ratio(text: str, n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one (0: none; near 1: a loop)."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def assess(text: str | None, finish_reason: str, settings: CaptionQualitySettings) -> tuple[str, list[str]]:
    """(clean caption, flags) for one generated caption."""
    flags: list[str] = []
    clean, removed = clean_text(text or "")
    if removed:
        flags.append(INVALID_TEXT)
    if not clean:
        flags.append(EMPTY)
    if finish_reason == "length":
        flags.append(TRUNCATED)
    if (
        len(_WORD.findall(clean)) >= settings.repetition_min_words
        and repeated_ngram_ratio(clean, settings.repetition_ngram) >= settings.repetition_ratio
    ):
        flags.append(REPETITIVE)
    return clean, flags
