"""Caption text normalisation shared by the caption backends and the quality metrics.

Two levels: ``normalize_caption`` is what we store (unicode NFC, whitespace collapsed, nothing
else changed, so the text stays the teacher's); ``canonical_for_dedup`` is only a comparison key
(case folded, punctuation dropped) used to find exact and near duplicates.
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


def canonical_for_dedup(text: str) -> str:
    """Comparison key: NFKC, case folded, punctuation removed, single spaces."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _WHITESPACE.sub(" ", _NON_WORD.sub(" ", folded)).strip()


__all__ = ["canonical_for_dedup", "normalize_caption"]
