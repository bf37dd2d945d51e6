"""Text front end: normalisation, sentence splitting and a character tokenizer.

The tokenizer is a fixed character table (no learned merges): tiny vocab, stable ids across
versions, and every id is meaningful to a small model trained on a few hours of speech.
"""
from __future__ import annotations

import re
import unicodedata

from .utils import SpeechMTPError

PAD, BOS, EOS, UNK = 0, 1, 2, 3
_CHARS = " abcdefghijklmnopqrstuvwxyz0123456789'.,!?;:-\"()"
_CHAR_TO_ID = {c: i + 4 for i, c in enumerate(_CHARS)}
TEXT_VOCAB_SIZE = 4 + len(_CHARS)

MAX_TEXT_CHARS = 100_000  # per request; longer text is refused rather than silently truncated


def normalize(text: str) -> str:
    """Unicode-fold, lower-case and tidy whitespace. Numbers etc. are expanded by later versions."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    text = text.replace("\u2014", " - ").replace("\u2013", " - ")
    text = re.sub(r"\s+", " ", text).strip().lower()
    return text


def split_sentences(text: str) -> list[str]:
    """Split on sentence-final punctuation followed by space; keeps the punctuation."""
    parts = re.split(r"(?<=[.!?;])\s+", text.strip())
    return [p for p in (s.strip() for s in parts) if p]


def encode(text: str, normalized: bool = False) -> list[int]:
    """Text -> ids with BOS/EOS. Raises SpeechMTPError when nothing speakable remains."""
    if len(text) > MAX_TEXT_CHARS:
        raise SpeechMTPError(f"text is {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
    norm = text if normalized else normalize(text)
    ids = [_CHAR_TO_ID.get(c, UNK) for c in norm]
    if not any(i not in (UNK, _CHAR_TO_ID[" "]) for i in ids):
        raise SpeechMTPError(f"nothing speakable in the text {text[:60]!r}: the voice reads English letters, digits and punctuation")
    return [BOS] + ids + [EOS]


def decode(ids: list[int]) -> str:
    inv = {v: k for k, v in _CHAR_TO_ID.items()}
    return "".join(inv.get(i, "") for i in ids)
