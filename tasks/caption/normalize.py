"""Caption text normalisation shared by the caption backends and the quality metrics.

Three levels: ``normalize_caption`` is what we store (unicode NFC, whitespace collapsed, nothing
else changed, so the text stays the teacher's) and also the key of exact duplicates: "The letter A."
and "The letter a." are different captions. ``comparison_words`` (NFKC, punctuation dropped, case
kept) is what near duplicates are compared on, and ``canonical_for_dedup`` (case folded as well)
is the key of the repetition metrics, where "A dog. a dog." is a loop whatever the case.
"""

from __future__ import annotations

import re
import unicodedata

_WHITESPACE = re.compile(r"\s+")
_NON_WORD = re.compile(r"[^\w\s]+")


def normalize_caption(text: str | None) -> str | None:
    """NFC-normalise and collapse runs of whitespace; ``None`` stays ``None``."""
    if text is None:
        return None
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


def comparison_words(text: str) -> list[str]:
    """Words for near-duplicate comparison: NFKC, punctuation removed, case kept."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text)).split()


def canonical_for_dedup(text: str) -> str:
    """Repetition key: NFKC, case folded, punctuation removed, single spaces."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _WHITESPACE.sub(" ", _NON_WORD.sub(" ", folded)).strip()


__all__ = ["canonical_for_dedup", "comparison_words", "normalize_caption"]
