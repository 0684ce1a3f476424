"""Thresholds of the caption and instruction-data quality gates (flow parameters, pydantic).

Row rules decide which samples are filtered out (each with one reason); aggregate rules
decide whether the whole dataset version passes.

The caption gate has two profiles, because "a good caption" depends on what the captions are for
(docs/data-quality.md has the calibration behind every default):

- ``teacher-captions`` (the default; the paper's use): dense descriptions written by a teacher VLM,
  one paragraph of complete sentences. Short or truncated text, loops, boilerplate openings and the
  same text for different images are the teacher's failure modes, so they are filtered.
- ``short-labels``: human labels and alt-text ("A chicken.", "Hibiscus", "The letter A."). One word
  is a legitimate label, a final period is optional, and the same label on many images is normal
  (it is measured and reported, not filtered).

A profile only fills the thresholds the caller did not set: ``CaptionGateThresholds(profile=
"short-labels", max_filtered_fraction=0.1)`` is the short-label profile with one override. The
profile name is part of the fingerprint, so the stored result says which rules were in force.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CaptionProfile = Literal["teacher-captions", "short-labels"]

CAPTION_PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    # Teacher captions (EVE's re-captioned pre-training data): 8-300 words of complete sentences.
    "teacher-captions": {
        "min_words": 3,
        "max_tokens": 512,
        "require_complete_sentence": True,
        "min_distinct_trigram_ratio": 0.7,
        "max_repeated_ngram_words": 6,
        "near_duplicate_jaccard": 0.8,
        "filter_cross_image_repeats": True,
        "max_non_language_token_share": 0.5,
        "filter_boilerplate_openings": True,
        "max_duplicate_rate": 0.05,
        "max_cross_image_repeat_rate": 0.05,
        "max_filtered_fraction": 0.2,
        "min_mean_words": 5.0,
        "max_mean_words": 300.0,
    },
    # Human short labels and alt-text. Calibrated on the 952 Tux Paint stamp descriptions and 7,396
    # OpenClipart titles (docs/data-quality.md): no legitimate Tux Paint caption is filtered (longest:
    # 31 words, 38 tokens); what is filtered among the titles is real junk (ids, HTML entities).
    "short-labels": {
        "min_words": 1,
        "max_tokens": 128,
        "require_complete_sentence": False,
        "min_distinct_trigram_ratio": 0.7,
        "max_repeated_ngram_words": 4,
        "near_duplicate_jaccard": None,
        "filter_cross_image_repeats": False,
        "max_non_language_token_share": 0.5,
        "filter_boilerplate_openings": True,
        "max_duplicate_rate": 0.05,
        "max_cross_image_repeat_rate": 1.0,
        "max_filtered_fraction": 0.2,
        "min_mean_words": 1.0,
        "max_mean_words": 40.0,
    },
}
"""Every threshold of each caption profile (the documented defaults; docs/data-quality.md)."""


class CaptionGateThresholds(BaseModel):
    """Bounds of the caption suite. Changing one changes the stored result key."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    profile: CaptionProfile = "teacher-captions"
    """Which profile fills the thresholds not given here: teacher-captions (dense teacher
    descriptions, the paper's use) or short-labels (human labels and alt-text)."""

    min_words: int = Field(default=3, ge=1)
    """A caption with fewer words is filtered as too short (an empty caption has 0)."""

    max_tokens: int = Field(default=512, ge=1)
    """A caption with more tokens (words and punctuation marks) is filtered as too long."""

    require_complete_sentence: bool = True
    """Filter captions that end in an ellipsis or do not end as a sentence (. ! or ?): a teacher
    caption that stops mid-sentence was cut off. Labels ("Hibiscus") need no period, and the
    ellipses in human labels are stylistic ("...a terrible thing to waste…"), so both are only
    measured there (``truncated_rate``, ``complete_sentence_rate``)."""

    min_distinct_trigram_ratio: float = Field(default=0.7, ge=0.0, le=1.0)
    """Distinct word trigrams / all word trigrams; lower means the teacher looped."""

    max_repeated_ngram_words: int = Field(default=6, ge=1)
    """Longest word n-gram that may occur twice; a longer repeat is a loop."""

    near_duplicate_jaccard: float | None = Field(default=0.8, gt=0.0, le=1.0)
    """Word-bigram Jaccard similarity (case-sensitive words) at which a caption counts as a near
    copy of an earlier one and is filtered; None: not checked (labels of two or three words differ
    by one word and are still different labels)."""

    filter_cross_image_repeats: bool = True
    """Filter a caption whose exact text was already given to a different image (a collapsed
    teacher writes one stock description for many images). Off for labels: "A chicken." may
    describe many pictures. Measured either way (``cross_image_repeat_rate``)."""

    max_non_language_token_share: float = Field(default=0.5, ge=0.0, le=1.0)
    """Share of words that are not alphabetic (ids, numbers, file names, symbols) above which a caption is filtered."""

    filter_boilerplate_openings: bool = True
    """Filter captions that open with boilerplate ("The image shows...") or refuse ("I'm sorry...")."""

    max_duplicate_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    """Aggregate: the version fails when more than this share of samples repeat an earlier sample
    exactly (the same image with the same caption, case-sensitive after whitespace normalisation)."""

    max_cross_image_repeat_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    """Aggregate: the version fails when more than this share of captions repeat, exactly or (when
    checked) nearly, the caption of a different image. 1.0: measured, never fails."""

    max_filtered_fraction: float = Field(default=0.2, ge=0.0, le=1.0)
    """Aggregate: the version fails when more than this share of captions is filtered out."""

    min_mean_words: float = Field(default=5.0, ge=0.0)
    """Aggregate: lower bound of the mean caption length in words (all captions, before filtering)."""

    max_mean_words: float = Field(default=300.0, gt=0.0)
    """Aggregate: upper bound of the mean caption length in words."""

    @model_validator(mode="before")
    @classmethod
    def _fill_from_profile(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        profile = data.get("profile", "teacher-captions")
        defaults = CAPTION_PROFILE_DEFAULTS.get(profile)
        if defaults is None:  # the Literal check below names the allowed values
            return data
        return {**defaults, **data}

    @model_validator(mode="after")
    def _check_mean_bounds(self) -> "CaptionGateThresholds":
        if self.min_mean_words > self.max_mean_words:
            raise ValueError("min_mean_words must not exceed max_mean_words")
        return self

    @classmethod
    def for_profile(cls, profile: CaptionProfile, **overrides: Any) -> "CaptionGateThresholds":
        """The profile's defaults with ``overrides`` applied (validated like any other input)."""
        return cls(profile=profile, **overrides)

    def overrides(self) -> dict[str, Any]:
        """Thresholds that differ from the profile's defaults: name -> (value, profile default)."""
        defaults = CAPTION_PROFILE_DEFAULTS[self.profile]
        return {
            name: (value, defaults[name])
            for name, value in self.model_dump(mode="json").items()
            if name in defaults and value != defaults[name]
        }

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


__all__ = ["CAPTION_PROFILE_DEFAULTS", "CaptionGateThresholds", "CaptionProfile", "InstructionGateThresholds"]
