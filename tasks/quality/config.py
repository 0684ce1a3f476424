"""Thresholds of the caption and instruction-data quality gates (flow parameters, pydantic).

Row rules decide which samples are filtered out (each with one reason); aggregate rules
decide whether the whole dataset version passes. Defaults are set for detailed teacher
captions of the EVE kind (one paragraph, 8-300 words); change them per dataset, never in code.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, Field, model_validator


class CaptionGateThresholds(BaseModel):
    """Bounds of the caption suite. Changing one changes the stored result key."""

    min_words: int = Field(default=3, ge=1)
    """A caption with fewer words is filtered as too short (an empty caption has 0)."""

    max_tokens: int = Field(default=512, ge=1)
    """A caption with more tokens (words and punctuation marks) is filtered as too long."""

    min_distinct_trigram_ratio: float = Field(default=0.7, ge=0.0, le=1.0)
    """Distinct word trigrams / all word trigrams; lower means the teacher looped."""

    max_repeated_ngram_words: int = Field(default=6, ge=1)
    """Longest word n-gram that may occur twice; a longer repeat is a loop."""

    near_duplicate_jaccard: float = Field(default=0.8, gt=0.0, le=1.0)
    """Word-bigram Jaccard similarity at which a caption counts as a near duplicate of an earlier one."""

    max_non_language_token_share: float = Field(default=0.5, ge=0.0, le=1.0)
    """Share of words that are not alphabetic (ids, numbers, file names, symbols) above which a caption is filtered."""

    filter_boilerplate_openings: bool = True
    """Filter captions that open with boilerplate ("The image shows...") or refuse ("I'm sorry...")."""

    max_duplicate_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    """Aggregate: the version fails when more than this share of captions are exact or near duplicates."""

    max_filtered_fraction: float = Field(default=0.2, ge=0.0, le=1.0)
    """Aggregate: the version fails when more than this share of captions is filtered out."""

    min_mean_words: float = Field(default=5.0, ge=0.0)
    """Aggregate: lower bound of the mean caption length in words (all captions, before filtering)."""

    max_mean_words: float = Field(default=300.0, gt=0.0)
    """Aggregate: upper bound of the mean caption length in words."""

    @model_validator(mode="after")
    def _check_mean_bounds(self) -> "CaptionGateThresholds":
        if self.min_mean_words > self.max_mean_words:
            raise ValueError("min_mean_words must not exceed max_mean_words")
        return self

    def fingerprint(self) -> str:
        """Short stable hash of the thresholds (part of the result key)."""
        return _fingerprint(self)


class InstructionGateThresholds(BaseModel):
    """Bounds of the instruction-data (stage 3) suite."""

    min_turns: int = Field(default=2, ge=2)
    """Fewest messages in a conversation (one human question and one gpt answer)."""

    max_turns: int = Field(default=64, ge=2)
    """Most messages in a conversation."""

    min_answer_words: int = Field(default=1, ge=0)
    """A gpt answer with fewer words is filtered (short VQA answers such as "Yes" are legitimate)."""

    max_answer_words: int = Field(default=1024, ge=1)
    """A gpt answer with more words is filtered."""

    max_filtered_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    """Aggregate: the version fails when more than this share of conversations is filtered out."""

    max_duplicate_conversation_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    """Aggregate: the version fails when more than this share of conversations repeat an earlier one exactly."""

    def fingerprint(self) -> str:
        """Short stable hash of the thresholds (part of the result key)."""
        return _fingerprint(self)


def _fingerprint(model: BaseModel) -> str:
    canonical = json.dumps(model.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


__all__ = ["CaptionGateThresholds", "InstructionGateThresholds"]
