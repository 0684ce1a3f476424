"""The versioned GX expectation suites: caption text (stages 1-2) and instruction data (stage 3).

Every expectation carries ``meta = {"rule": <name>, "scope": "row" | "aggregate"}``. A failing
row expectation filters the rows it lists (its unexpected indices) with that rule as the
reason; a failing aggregate expectation fails the whole dataset version. Rules are listed in
priority order: a row that breaks several rules is filtered with the first as its reason.

Bump a ``*_SUITE_VERSION`` whenever an expectation is added, removed or changes meaning; the
thresholds are parameters and are keyed separately (``CaptionGateThresholds.fingerprint``).
"""

from __future__ import annotations

import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # no telemetry from a gate

import great_expectations as gx  # noqa: E402
import great_expectations.expectations as gxe  # noqa: E402

from tasks.quality.config import CaptionGateThresholds, InstructionGateThresholds  # noqa: E402
from tasks.quality.metrics import METRICS_VERSION  # noqa: E402

CAPTION_SUITE_NAME = "eve-caption-quality"
CAPTION_SUITE_VERSION = f"2.m{METRICS_VERSION}"  # 2: profiles; per-image duplicates; cross-image repeats
INSTRUCTION_SUITE_NAME = "eve-instruction-quality"
INSTRUCTION_SUITE_VERSION = "2"  # 2: duplicates are per image (same Q/A about another image is not one)

RULE_DESCRIPTIONS: dict[str, str] = {
    "empty_or_too_short": "caption is empty or shorter than min_words",
    "control_characters": "caption contains control, zero-width or replacement characters",
    "markup": "caption contains HTML/markdown markup",
    "url": "caption contains a URL",
    "exact_duplicate": "the same image with the same caption as an earlier sample (case-sensitive)",
    "cross_image_repeat": "the same caption as an earlier sample of a different image",
    "near_duplicate": "caption nearly repeats an earlier caption (case-sensitive word-bigram Jaccard)",
    "truncated": "caption ends in an ellipsis (cut off)",
    "incomplete_sentence": "caption does not end as a complete sentence (truncated)",
    "repetitive_trigrams": "too few distinct word trigrams (teacher loop)",
    "repeated_ngram": "a long word n-gram occurs twice (teacher loop)",
    "boilerplate_opening": "caption opens with boilerplate or a refusal",
    "too_long": "caption has more tokens than max_tokens",
    "non_language_tokens": "too many non-alphabetic words (ids, numbers, symbols)",
    "duplicate_rate": "share of duplicate samples (same image, same caption) above max_duplicate_rate",
    "cross_image_repeat_rate": "share of captions repeating another image's caption (exactly or nearly) "
    "above max_cross_image_repeat_rate",
    "mean_words": "mean caption length outside [min_mean_words, max_mean_words]",
    "not_empty": "the dataset has no samples",
    "malformed_conversation": "conversations is missing or not a list of {from, value} messages",
    "roles_not_alternating": "messages do not alternate human/gpt starting with human and ending with gpt",
    "turn_count": "number of messages outside [min_turns, max_turns]",
    "image_placeholder_count": "not exactly one <image> placeholder for an image sample (none for text-only)",
    "image_placeholder_position": "the <image> placeholder is not in the first human message",
    "empty_turn": "a message is empty",
    "repeated_turn": "the same message occurs twice in one conversation",
    "answer_too_short": "a gpt answer is shorter than min_answer_words",
    "answer_too_long": "a gpt answer is longer than max_answer_words",
    "duplicate_conversation_rate": "share of repeated conversations above max_duplicate_conversation_rate",
    "filtered_fraction": "share of filtered samples above max_filtered_fraction",
}


def _meta(rule: str, scope: str, bound: str = "") -> dict[str, str]:
    """``bound`` states the rule in force ("num_words >= 3") for reports and Data Docs."""
    return {"rule": rule, "scope": scope, "description": RULE_DESCRIPTIONS[rule], "bound": bound}


def _is_false(column: str, rule: str) -> gxe.Expectation:
    return gxe.ExpectColumnValuesToBeInSet(column=column, value_set=[False], meta=_meta(rule, "row", f"not {column}"))


def _is_true(column: str, rule: str) -> gxe.Expectation:
    return gxe.ExpectColumnValuesToBeInSet(column=column, value_set=[True], meta=_meta(rule, "row", column))


def build_caption_suite(thresholds: CaptionGateThresholds) -> gx.ExpectationSuite:
    """The caption suite over the table of ``tasks.quality.metrics.compute_caption_metrics``.

    Which row rules exist depends on the profile's switches (``require_complete_sentence``,
    ``filter_cross_image_repeats``, ``near_duplicate_jaccard``, ``filter_boilerplate_openings``);
    every bound comes from ``thresholds``.
    """
    t = thresholds
    expectations: list[gxe.Expectation] = [
        gxe.ExpectColumnValuesToBeBetween(
            column="num_words", min_value=t.min_words,
            meta=_meta("empty_or_too_short", "row", f"num_words >= {t.min_words}"),
        ),
        _is_false("has_control_chars", "control_characters"),
        _is_false("has_markup", "markup"),
        _is_false("has_url", "url"),
        _is_false("is_exact_duplicate", "exact_duplicate"),
    ]
    if t.filter_cross_image_repeats:
        expectations.append(_is_false("is_cross_image_repeat", "cross_image_repeat"))
    if t.near_duplicate_jaccard is not None:
        expectations.append(gxe.ExpectColumnValuesToBeInSet(
            column="is_near_duplicate", value_set=[False],
            meta=_meta("near_duplicate", "row", f"bigram Jaccard < {t.near_duplicate_jaccard}"),
        ))
    if t.require_complete_sentence:
        expectations.append(_is_false("ends_with_ellipsis", "truncated"))
        expectations.append(_is_true("ends_complete_sentence", "incomplete_sentence"))
    expectations += [
        gxe.ExpectColumnValuesToBeBetween(
            column="distinct_trigram_ratio",
            min_value=t.min_distinct_trigram_ratio,
            meta=_meta("repetitive_trigrams", "row", f"distinct_trigram_ratio >= {t.min_distinct_trigram_ratio}"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="longest_repeated_ngram_words",
            max_value=t.max_repeated_ngram_words,
            meta=_meta("repeated_ngram", "row", f"longest_repeated_ngram_words <= {t.max_repeated_ngram_words}"),
        ),
    ]
    if t.filter_boilerplate_openings:
        expectations.append(_is_false("has_boilerplate_opening", "boilerplate_opening"))
    expectations += [
        gxe.ExpectColumnValuesToBeBetween(
            column="num_tokens", max_value=t.max_tokens, meta=_meta("too_long", "row", f"num_tokens <= {t.max_tokens}")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="non_language_token_share",
            max_value=t.max_non_language_token_share,
            meta=_meta("non_language_tokens", "row",
                       f"non_language_token_share <= {t.max_non_language_token_share}"),
        ),
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta=_meta("not_empty", "aggregate", "rows >= 1")),
        gxe.ExpectColumnMeanToBeBetween(
            column="is_duplicate", max_value=t.max_duplicate_rate,
            meta=_meta("duplicate_rate", "aggregate", f"duplicate rate <= {t.max_duplicate_rate}"),
        ),
        gxe.ExpectColumnMeanToBeBetween(
            column="is_repeated_caption", max_value=t.max_cross_image_repeat_rate,
            meta=_meta("cross_image_repeat_rate", "aggregate",
                       f"cross-image repeat rate <= {t.max_cross_image_repeat_rate}"),
        ),
        gxe.ExpectColumnMeanToBeBetween(
            column="num_words",
            min_value=t.min_mean_words,
            max_value=t.max_mean_words,
            meta=_meta("mean_words", "aggregate", f"{t.min_mean_words} <= mean words <= {t.max_mean_words}"),
        ),
    ]
    return gx.ExpectationSuite(
        name=CAPTION_SUITE_NAME,
        expectations=expectations,
        meta={"suite_version": CAPTION_SUITE_VERSION, "profile": t.profile, "thresholds": t.model_dump(mode="json")},
    )


def build_instruction_suite(thresholds: InstructionGateThresholds) -> gx.ExpectationSuite:
    """The instruction suite over the table of ``compute_instruction_metrics``."""
    t = thresholds
    expectations: list[gxe.Expectation] = [
        _is_true("is_well_formed", "malformed_conversation"),
        _is_true("roles_alternate", "roles_not_alternating"),
        gxe.ExpectColumnValuesToBeBetween(
            column="num_turns", min_value=t.min_turns, max_value=t.max_turns,
            meta=_meta("turn_count", "row", f"{t.min_turns} <= turns <= {t.max_turns}")
        ),
        gxe.ExpectColumnPairValuesToBeEqual(
            column_A="num_image_placeholders",
            column_B="expected_image_placeholders",
            meta=_meta("image_placeholder_count", "row"),
        ),
        _is_true("image_placeholder_in_first_turn", "image_placeholder_position"),
        _is_false("has_empty_turn", "empty_turn"),
        _is_false("has_repeated_turn", "repeated_turn"),
        gxe.ExpectColumnValuesToBeBetween(
            column="min_answer_words", min_value=t.min_answer_words,
            meta=_meta("answer_too_short", "row", f"answer words >= {t.min_answer_words}")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="max_answer_words", max_value=t.max_answer_words,
            meta=_meta("answer_too_long", "row", f"answer words <= {t.max_answer_words}")
        ),
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta=_meta("not_empty", "aggregate", "rows >= 1")),
        gxe.ExpectColumnMeanToBeBetween(
            column="is_duplicate_conversation",
            max_value=t.max_duplicate_conversation_rate,
            meta=_meta("duplicate_conversation_rate", "aggregate",
                       f"duplicate conversation rate <= {t.max_duplicate_conversation_rate}"),
        ),
    ]
    return gx.ExpectationSuite(
        name=INSTRUCTION_SUITE_NAME,
        expectations=expectations,
        meta={"suite_version": INSTRUCTION_SUITE_VERSION, "thresholds": t.model_dump(mode="json")},
    )


__all__ = [
    "CAPTION_SUITE_NAME",
    "CAPTION_SUITE_VERSION",
    "INSTRUCTION_SUITE_NAME",
    "INSTRUCTION_SUITE_VERSION",
    "RULE_DESCRIPTIONS",
    "build_caption_suite",
    "build_instruction_suite",
]
