"""Caption and instruction metrics: each planted defect raises exactly its flag; MinHash matches brute force."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from tasks.quality.instruction_metrics import compute_instruction_metrics
from tasks.quality.metrics import compute_caption_metrics
from tasks.quality.near_duplicates import bigram_shingles, find_near_duplicates

CLEAN = "A brown dog runs across a wide green field under a cloudy sky."

FLAG_COLUMNS = [
    "is_exact_duplicate", "is_near_duplicate", "has_boilerplate_opening",
    "has_url", "has_markup", "has_control_chars",
]


@pytest.mark.parametrize(
    ("caption", "flag"),
    [
        ("The image shows a brown dog on a field.", "has_boilerplate_opening"),
        ("In this picture, a cat sleeps on a sofa.", "has_boilerplate_opening"),
        ("I'm sorry, I cannot describe this image.", "has_boilerplate_opening"),
        ("A cat on a sofa, see https://example.com for more.", "has_url"),
        ("A <b>red</b> car parked by the road.", "has_markup"),
        ("A **red** car parked by the road.", "has_markup"),
        ("A red car parked\x07 by the road.", "has_control_chars"),
        ("A red car parked by the road\ufffd.", "has_control_chars"),
    ],
)
def test_planted_flag_is_raised_alone(caption: str, flag: str) -> None:
    table = compute_caption_metrics(["clean", "bad"], [CLEAN, caption])
    assert not table.loc[0, FLAG_COLUMNS].any()
    raised = [column for column in FLAG_COLUMNS if table.loc[1, column]]
    assert raised == [flag]


def test_sentence_completeness_and_lengths() -> None:
    captions = [CLEAN, "A man riding a bicycle down the", "A man riding a bicycle down the...", "", None]
    table = compute_caption_metrics([f"k{i}" for i in range(5)], captions)
    assert table["ends_complete_sentence"].tolist() == [True, False, False, False, False]
    assert table["num_words"].tolist() == [13, 7, 7, 0, 0]
    # 13 words + final period; "the..." is 1 word + 3 period tokens.
    assert table["num_tokens"].tolist()[:3] == [14, 7, 10]


def test_repetition_metrics_on_a_loop() -> None:
    loop = "a dog sitting on a bench " * 3
    table = compute_caption_metrics(["clean", "loop"], [CLEAN, loop.strip() + "."])
    # The loop repeats 12 of its 18 words: the 12-word prefix occurs at offsets 0 and 6.
    assert table.loc[1, "longest_repeated_ngram_words"] == 12
    # 16 trigrams, of which 6 distinct (the period-free loop has period 6).
    assert table.loc[1, "distinct_trigram_ratio"] == pytest.approx(6 / 16)
    assert table.loc[0, "distinct_trigram_ratio"] == 1.0
    assert table.loc[0, "longest_repeated_ngram_words"] == 1  # "a" occurs twice


def test_non_language_share_counts_ids_and_numbers() -> None:
    table = compute_caption_metrics(["k"], ["IMG_2031.JPG DSC 0001 1920x1080 photo."])
    # Words: IMG_2031.JPG, DSC, 0001, 1920x1080, photo. -> 3 of 5 are not alphabetic.
    assert table.loc[0, "non_language_token_share"] == pytest.approx(3 / 5)


def test_exact_duplicates_are_case_sensitive_per_image_and_keep_the_first() -> None:
    captions = ["The letter A.", "The letter a.", "The  letter A. ", "The letter A.", "A chicken.", "A chicken."]
    images = ["img-A", "img-a", "img-A", "img-A-outlined", "hen-1", "hen-2"]
    table = compute_caption_metrics([f"k{i}" for i in range(6)], captions, image_ids=images)
    # Only the same image with the same text (after whitespace normalisation) is a duplicate sample.
    assert table["is_exact_duplicate"].tolist() == [False, False, True, False, False, False]
    assert table["is_duplicate"].tolist() == [0, 0, 1, 0, 0, 0]
    # The same text on a different image is its own metric, never a duplicate of text.
    assert table["is_cross_image_repeat"].tolist() == [False, False, False, True, False, True]
    assert table["is_repeated_caption"].tolist() == [0, 0, 0, 1, 0, 1]
    # Case-sensitive near duplicates: "A"/"a" are different words, so no near copy either.
    assert not table["is_near_duplicate"].any()


def test_rows_without_image_ids_are_distinct_images() -> None:
    table = compute_caption_metrics(["a", "b"], [CLEAN, CLEAN])
    assert table["is_exact_duplicate"].tolist() == [False, False]
    assert table["is_cross_image_repeat"].tolist() == [False, True]


def test_near_duplicate_search_can_be_switched_off_and_ellipsis_is_measured() -> None:
    near = CLEAN.replace("brown", "black")
    table = compute_caption_metrics(["a", "b", "c"], [CLEAN, near, "A dog running..."], near_duplicate_jaccard=None)
    assert not table["is_near_duplicate"].any()
    assert compute_caption_metrics(["a", "b"], [CLEAN, near], near_duplicate_jaccard=0.7)["is_near_duplicate"].tolist() == [False, True]
    assert table["ends_with_ellipsis"].tolist() == [False, False, True]


def test_near_duplicates_match_brute_force_jaccard() -> None:
    rng = random.Random(7)
    vocabulary_words = [f"w{i}" for i in range(60)]
    base = [[rng.choice(vocabulary_words) for _ in range(20)] for _ in range(60)]
    captions = list(base)
    for words in base[:30]:  # near copies: one inner word changed, Jaccard about 17/21
        edited = list(words)
        edited[rng.randrange(1, 19)] = "zz"
        captions.append(edited)
    vocabulary: dict[str, int] = {}
    sets = [bigram_shingles(words, vocabulary) for words in captions]
    threshold = 0.6
    found = find_near_duplicates(sets, threshold, np.ones(len(sets), dtype=bool))

    def jaccard(i: int, j: int) -> float:
        return len(sets[i] & sets[j]) / len(sets[i] | sets[j])

    # Precision: every reported pair is truly similar and points backwards.
    for row, earlier in enumerate(found):
        if earlier >= 0:
            assert earlier < row and jaccard(row, earlier) >= threshold
    # Recall: every caption with a clearly similar earlier caption is reported (LSH misses a
    # pair at Jaccard 0.7 with probability (1 - 0.49)^16 ~ 2e-5).
    clearly_similar = {
        j for i, j in itertools.combinations(range(len(sets)), 2) if jaccard(i, j) >= 0.7
    }
    assert len(clearly_similar) >= 30
    assert clearly_similar <= set(np.flatnonzero(found >= 0).tolist())


def test_instruction_metrics_flag_structure() -> None:
    good = [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "A dog."}]
    cases = {
        "good": (good, True),
        "text_only": ([{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}], False),
        "two_images": ([{"from": "human", "value": "<image>\n<image>\nQ?"}, {"from": "gpt", "value": "A."}], True),
        "no_alternation": ([good[0], good[0] | {"value": "<image>\nAgain?"}], True),
        "empty_answer": ([good[0], {"from": "gpt", "value": "  "}], True),
        "malformed": ("not a list", True),
    }
    table = compute_instruction_metrics(
        list(cases), [c for c, _ in cases.values()], [h for _, h in cases.values()]
    ).set_index("key")
    assert table.loc["good", "roles_alternate"] and table.loc["good", "num_image_placeholders"] == 1
    assert table.loc["text_only", "num_image_placeholders"] == table.loc["text_only", "expected_image_placeholders"] == 0
    assert table.loc["two_images", "num_image_placeholders"] == 2
    assert not table.loc["no_alternation", "roles_alternate"]
    assert table.loc["empty_answer", "has_empty_turn"]
    assert not table.loc["malformed", "is_well_formed"]


def test_worker_processes_give_the_identical_table(monkeypatch) -> None:
    import tasks.quality.metrics as metrics_module

    monkeypatch.setattr(metrics_module, "MIN_CAPTIONS_FOR_WORKERS", 100)
    rng = random.Random(3)
    words = ["red", "bus", "dog", "runs", "the", "a", "on", "field", "IMG_1", "<b>", "http://x.io"]
    captions = [" ".join(rng.choice(words) for _ in range(rng.randrange(1, 14))) + rng.choice([".", "", "..."])
                for _ in range(3_000)]
    keys = [f"k{i}" for i in range(len(captions))]
    captions[2_000:2_100] = captions[:100]  # the same images (below) captioned twice alike
    images = [f"img{i % 2_000}" for i in range(len(captions))]
    serial = compute_caption_metrics(keys, captions, image_ids=images)
    parallel = compute_caption_metrics(keys, captions, workers=2, image_ids=images)
    assert serial.equals(parallel)
    assert serial["is_exact_duplicate"].any() and serial["is_cross_image_repeat"].any()
    assert serial["has_markup"].any() and serial["has_url"].any()
