"""Scoring functions against values computed by hand (arithmetic in the comments)."""

from __future__ import annotations

import math

import pytest

from tasks.evaluate import metrics as M


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two red Circles.", "2 red circles"),
        ("The answer: an apple!", "answer apple"),
        ("  RED  ", "red"),
        ("1,000", "1000"),
        ("2.5 meters", "2.5 meters"),
        ("top-left", "top left"),
        ("none", "0"),
    ],
)
def test_normalize_answer(raw, normalised):
    assert M.normalize_answer(raw) == normalised


def test_exact_match_uses_normalisation():
    assert M.exact_match("Two.", "2") == 1.0
    assert M.exact_match("the Square", "square") == 1.0
    assert M.exact_match("squares", "square") == 0.0


def test_vqa_soft_accuracy_counts_humans():
    humans = ["red"] * 8 + ["dark red", "orange"]
    assert M.vqa_soft_accuracy("Red", humans) == 1.0  # min(8/3, 1) = 1
    assert M.vqa_soft_accuracy("orange", humans) == pytest.approx(1 / 3)  # min(1/3, 1)
    numbers = ["2", "two", "3", "2", "3"]  # normalised: 2, 2, 3, 2, 3
    assert M.vqa_soft_accuracy("two", numbers) == 1.0  # 3 humans said 2: min(3/3, 1)
    assert M.vqa_soft_accuracy("3", numbers) == pytest.approx(2 / 3)  # 2 humans
    assert M.vqa_soft_accuracy("blue", humans) == 0.0
    with pytest.raises(ValueError):
        M.vqa_soft_accuracy("x", [])


def test_grouped_mean():
    assert M.grouped_mean([1.0, 0.0, 1.0, 1.0], ["a", "a", "b", None]) == {"a": 0.5, "b": 1.0}


def test_pope_parsing_and_metrics():
    predictions = ["Yes, there is a circle.", "No.", "Yes", "Yes, there is a dog", "There is not a circle."]
    parsed = [M.pope_yes_no(p) for p in predictions]
    assert parsed == ["yes", "no", "yes", "yes", "no"]
    stats = M.pope_metrics(parsed, ["yes", "no", "yes", "no", "yes"])
    # TP = items 1,3 (2); FP = item 4 (1); TN = item 2 (1); FN = item 5 (1)
    assert stats.accuracy == pytest.approx((2 + 1) / 5)
    assert stats.precision == pytest.approx(2 / (2 + 1))
    assert stats.recall == pytest.approx(2 / (2 + 1))
    assert stats.f1 == pytest.approx(2 * (2 / 3) * (2 / 3) / (2 / 3 + 2 / 3))
    assert stats.yes_ratio == pytest.approx(3 / 5)


def test_mme_parsing_and_scores():
    assert [M.mme_yes_no(p) for p in ["Yes", "no.", "Yes, it is", "I think so", "Nope"]] == [
        "yes", "no", "yes", "other", "no",
    ]
    correct = [True, True, True, False, False, True, False, True]
    subtasks = ["existence"] * 4 + ["count"] * 4
    images = ["e1", "e1", "e2", "e2", "c1", "c1", "c2", "c2"]
    scores = M.mme_subtask_scores(correct, subtasks, images)
    # existence: 3/4 questions right; images e1 (both right) -> acc+ 1/2; 100*0.75 + 100*0.5 = 125
    assert scores["existence"].accuracy == 0.75
    assert scores["existence"].accuracy_plus == 0.5
    assert scores["existence"].score == pytest.approx(125.0)
    # count: 2/4 right, no image fully right -> 100*0.5 + 0 = 50
    assert scores["count"].score == pytest.approx(50.0)
    totals = M.mme_totals(scores)
    assert totals["perception_score"] == pytest.approx(175.0)
    assert totals["cognition_score"] == 0.0


def test_caption_scores_hand_computed():
    references = [["A red circle on a white background."], ["One blue square in the middle of the picture"]]
    perfect = M.caption_scores(["a red circle on a white background",
                                "one blue square in the middle of the picture"], references)
    # The two images share no word, so every n-gram has idf log(2/1) > 0 and a perfect hypothesis
    # has cosine 1 for n = 1..4, no length penalty: CIDEr-D = 10 * mean(1, 1, 1, 1) = 10.
    assert perfect.per_sample_cider_d == pytest.approx([10.0, 10.0])
    assert perfect.cider_d == pytest.approx(10.0)
    assert perfect.bleu_4 == pytest.approx(1.0)
    assert perfect.rouge_l == pytest.approx(1.0)

    partial = M.caption_scores(["A red circle", "one blue square in the middle of the picture"], references)
    # ROUGE-L (beta 1.2): LCS("a red circle", ref of 7 tokens) = 3; P = 3/3, R = 3/7;
    # F = (1 + 1.44) P R / (R + 1.44 P)
    p, r = 1.0, 3 / 7
    rouge_first = (1 + 1.2**2) * p * r / (r + 1.2**2 * p)
    assert partial.per_sample_rouge_l[0] == pytest.approx(rouge_first)
    assert partial.rouge_l == pytest.approx((rouge_first + 1.0) / 2)
    # CIDEr-D, all weights tf * log 2 (so log 2 cancels in the cosines):
    #  1-grams: hyp {a, red, circle}, ref {a:2, red, circle, on, white, background}
    #           clipped dot = 2 + 1 + 1 = 4; |hyp| = sqrt(3), |ref| = sqrt(4 + 5) = 3
    #  2-grams: 2 of hyp's 2 in ref's 6 -> 2 / (sqrt(2) sqrt(6));  3-grams: 1 / (1 * sqrt(5));
    #  4-grams: hyp has none -> 0.
    #  Length penalty exp(-d^2 / (2 * 6^2)); pycocoevalcap counts length in bigrams: d = 2 - 6.
    cosines = [4 / (math.sqrt(3) * 3), 2 / (math.sqrt(2) * math.sqrt(6)), 1 / math.sqrt(5), 0.0]
    penalty = math.exp(-((2 - 6) ** 2) / (2 * 6.0**2))
    assert partial.per_sample_cider_d[0] == pytest.approx(10 * penalty * sum(cosines) / 4)


def test_caption_scores_reject_bad_input():
    with pytest.raises(ValueError, match="no non-empty reference"):
        M.caption_scores(["x y z"], [["!!!"]])
    with pytest.raises(ValueError, match="2 predictions for 1"):
        M.caption_scores(["a", "b"], [["a"]])
    # An empty prediction scores 0 rather than crashing the scorers.
    empty = M.caption_scores(["", "a b c d"], [["red circle here now"], ["a b c d"]])
    assert empty.per_sample_cider_d[0] == 0.0


def test_perplexity_is_token_weighted():
    # documents: 2 tokens with NLL sum 2.0, 2 tokens with NLL sum 4.0 -> exp(6 / 4)
    assert M.perplexity_from_nll([2.0, 4.0], [2, 2]) == pytest.approx(math.exp(1.5))
    with pytest.raises(ValueError):
        M.perplexity_from_nll([], [])
