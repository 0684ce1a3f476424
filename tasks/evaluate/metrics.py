"""Scoring functions for the evaluation suites, on plain Python inputs (strings and lists).

Everything here is model-free so every number can be checked by hand:

- ``normalize_answer`` / ``exact_match``: short-answer VQA (lowercase, punctuation and articles
  stripped, number words to digits).
- ``vqa_soft_accuracy``: VQAv2/GQA-style accuracy with several human answers,
  ``min(#humans that gave the answer / 3, 1)``.
- ``pope_yes_no`` / ``pope_metrics``: POPE's answer parsing and yes/no statistics.
- ``mme_yes_no`` / ``mme_subtask_scores``: MME's parsing, per-subtask acc and acc+ (both questions
  of one image right), and the perception/cognition sums (x100), as in MME's eval tool.
- ``caption_scores``: CIDEr-D, BLEU-4 and ROUGE-L with pycocoevalcap's pure-Python scorers on our
  own simple tokenisation (no Java PTB tokenizer).
- ``perplexity_from_nll``: token-weighted perplexity from per-document NLL sums.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

_ARTICLES = {"a", "an", "the"}
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11",
    "twelve": "12", "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16",
    "seventeen": "17", "eighteen": "18", "nineteen": "19", "twenty": "20",
}
# Thousands separators ("1,000") and decimal points ("2.5") are part of a number, not punctuation.
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d{3}\b)")
_PUNCTUATION = re.compile(r"(?!(?<=\d)\.(?=\d))[^\w\s]|_")

MME_PERCEPTION_SUBTASKS = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
    "artwork", "OCR",
)
MME_COGNITION_SUBTASKS = (
    "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning",
)


def normalize_answer(text: str) -> str:
    """Canonical form of a short answer: ``"Two red Circles."`` -> ``"2 red circles"``."""
    text = _DIGIT_COMMA.sub("", text.lower())
    text = _PUNCTUATION.sub(" ", text)
    words = [_NUMBER_WORDS.get(word, word) for word in text.split() if word not in _ARTICLES]
    return " ".join(words)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised prediction equals the normalised reference, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


def vqa_soft_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """VQA accuracy against several human answers: ``min(#matching humans / 3, 1)``.

    With a single reference this is exact match. (The official VQAv2 script additionally averages
    this over the 10 leave-one-out subsets of 10 answers; the simple form is what we document.)
    """
    if not human_answers:
        raise ValueError("vqa_soft_accuracy needs at least one reference answer")
    if len(human_answers) == 1:
        return exact_match(prediction, human_answers[0])
    predicted = normalize_answer(prediction)
    matches = sum(normalize_answer(answer) == predicted for answer in human_answers)
    return min(matches / 3.0, 1.0)


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; NaN for an empty sequence (never silently 0)."""
    return float(sum(values) / len(values)) if values else float("nan")


def grouped_mean(values: Sequence[float], groups: Sequence[str | None]) -> dict[str, float]:
    """Mean of ``values`` per group label (items without a group are left out)."""
    buckets: dict[str, list[float]] = {}
    for value, group in zip(values, groups, strict=True):
        if group is not None:
            buckets.setdefault(group, []).append(value)
    return {group: mean(bucket) for group, bucket in sorted(buckets.items())}


# --- POPE ---------------------------------------------------------------------------------------


def pope_yes_no(prediction: str) -> str:
    """POPE's parsing (LLaVA ``eval_pope.py``): first sentence, commas dropped; "no"/"not" -> no."""
    first_sentence = prediction.split(".")[0].replace(",", "")
    words = first_sentence.split(" ")
    if "No" in words or "not" in words or "no" in words:
        return "no"
    return "yes"


@dataclass(frozen=True)
class YesNoStats:
    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float
    """Share of predictions that are "yes" (POPE reports it to expose a yes-bias)."""


def pope_metrics(predicted: Sequence[str], labels: Sequence[str]) -> YesNoStats:
    """Yes/no statistics with "yes" as the positive class; inputs are "yes"/"no" strings."""
    pairs = list(zip(predicted, labels, strict=True))
    if not pairs:
        raise ValueError("pope_metrics needs at least one prediction")
    true_pos = sum(p == "yes" and t == "yes" for p, t in pairs)
    false_pos = sum(p == "yes" and t == "no" for p, t in pairs)
    true_neg = sum(p == "no" and t == "no" for p, t in pairs)
    false_neg = sum(p == "no" and t == "yes" for p, t in pairs)
    precision = true_pos / (true_pos + false_pos) if true_pos + false_pos else 0.0
    recall = true_pos / (true_pos + false_neg) if true_pos + false_neg else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return YesNoStats(
        accuracy=(true_pos + true_neg) / len(pairs),
        precision=precision,
        recall=recall,
        f1=f1,
        yes_ratio=(true_pos + false_pos) / len(pairs),
    )


# --- MME ----------------------------------------------------------------------------------------


def mme_yes_no(prediction: str) -> str:
    """MME's parsing (its ``calculation.py``): "yes"/"no", else look in the first 4 chars."""
    answer = prediction.strip().lower()
    if answer in ("yes", "no"):
        return answer
    prefix = answer[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


@dataclass(frozen=True)
class MmeSubtaskScore:
    accuracy: float
    """Share of questions answered right."""
    accuracy_plus: float
    """Share of images whose questions (two per image) are all answered right."""
    num_questions: int
    num_images: int

    @property
    def score(self) -> float:
        """MME's subtask score: ``100 * acc + 100 * acc+`` (0..200)."""
        return 100.0 * self.accuracy + 100.0 * self.accuracy_plus


def mme_subtask_scores(
    correct: Sequence[bool], subtasks: Sequence[str], image_keys: Sequence[str]
) -> dict[str, MmeSubtaskScore]:
    """Per-subtask acc and acc+ from per-question correctness, subtask and image key."""
    by_subtask: dict[str, list[tuple[bool, str]]] = {}
    for is_correct, subtask, image_key in zip(correct, subtasks, image_keys, strict=True):
        by_subtask.setdefault(subtask, []).append((bool(is_correct), image_key))
    scores = {}
    for subtask, rows in sorted(by_subtask.items()):
        per_image: dict[str, bool] = {}
        for is_correct, image_key in rows:
            per_image[image_key] = per_image.get(image_key, True) and is_correct
        scores[subtask] = MmeSubtaskScore(
            accuracy=sum(ok for ok, _ in rows) / len(rows),
            accuracy_plus=sum(per_image.values()) / len(per_image),
            num_questions=len(rows),
            num_images=len(per_image),
        )
    return scores


def mme_totals(scores: dict[str, MmeSubtaskScore]) -> dict[str, float]:
    """Perception and cognition totals: sums of the subtask scores present (max 2000 / 800)."""
    return {
        "perception_score": sum(s.score for k, s in scores.items() if k in MME_PERCEPTION_SUBTASKS),
        "cognition_score": sum(s.score for k, s in scores.items() if k in MME_COGNITION_SUBTASKS),
    }


# --- Captioning ---------------------------------------------------------------------------------

_CAPTION_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize_caption(text: str) -> str:
    """Lowercased word tokens joined by single spaces (stands in for the Java PTB tokenizer)."""
    return " ".join(_CAPTION_TOKEN.findall(text.lower()))


@dataclass(frozen=True)
class CaptionScores:
    cider_d: float
    bleu_4: float
    """Corpus-level BLEU-4 (not the mean of per-caption BLEU)."""
    rouge_l: float
    per_sample_cider_d: list[float]
    per_sample_rouge_l: list[float]
    per_sample_bleu_4: list[float]


def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> CaptionScores:
    """CIDEr-D (x10 scale, as COCO reports it), BLEU-4 and ROUGE-L over a caption corpus.

    CIDEr-D's IDF comes from the references of this corpus, so scores are only comparable on the
    same evaluation set (the gate pairs candidate and production on identical references).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference sets")
    if not predictions:
        raise ValueError("caption_scores needs at least one caption")
    # An empty hypothesis would crash the scorers' n-gram code; an unknown token scores 0 instead.
    res = {i: [tokenize_caption(p) or "<empty>"] for i, p in enumerate(predictions)}
    gts = {}
    for i, refs in enumerate(references):
        tokenized = [tokenize_caption(r) for r in refs if tokenize_caption(r)]
        if not tokenized:
            raise ValueError(f"caption {i} has no non-empty reference")
        gts[i] = tokenized
    cider, cider_each = Cider().compute_score(gts, res)
    bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_each = Rouge().compute_score(gts, res)
    return CaptionScores(
        cider_d=float(cider),
        bleu_4=float(bleu[3]),
        rouge_l=float(rouge),
        per_sample_cider_d=[float(x) for x in cider_each],
        per_sample_rouge_l=[float(x) for x in rouge_each],
        per_sample_bleu_4=[float(x) for x in bleu_each[3]],
    )


# --- Language modelling -------------------------------------------------------------------------


def perplexity_from_nll(nll_sums: Sequence[float], token_counts: Sequence[int]) -> float:
    """``exp(sum of token NLLs / number of tokens)`` over all documents (token-weighted)."""
    total_tokens = sum(token_counts)
    if total_tokens <= 0:
        raise ValueError("perplexity needs at least one scored token")
    return math.exp(sum(nll_sums) / total_tokens)


def ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    """The set of word n-grams of a token list."""
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}
