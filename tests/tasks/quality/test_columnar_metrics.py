"""The column-at-a-time caption metrics equal the row-wise reference (``_text_metrics``), caption by caption.

``compute_caption_metrics`` computes plain (ASCII) captions from byte masks, sorted integer codes
and RE2, and every other caption with the row-wise reference. Forcing every caption through the
reference gives the table the metrics are defined by; the two tables must be identical on real
human captions, on hostile strings and on random strings built to hit the patterns' edges.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tasks.quality.metrics as metrics
from tasks.caption.normalize import comparison_words
from tasks.quality.columnar import earlier_equal, group
from tasks.quality.near_duplicates import (
    Shingles,
    bigram_shingles,
    bigram_shingles_ragged,
    find_near_duplicates,
    minhash_signatures,
)

FIXTURE = Path(__file__).parents[2] / "fixtures" / "real_data" / "openclipart_captions.jsonl"
TUXPAINT_STAMPS = Path("/usr/share/tuxpaint/stamps")

HOSTILE = [
    # empty, whitespace, control and invisible characters
    "", " ", "\t\n\r ", "\n\n", "\x00", "a\x00b", "\x07bell", "a\x0bb c", "form\x0cfeed", "x\x1cy z\x1f",
    "\x7f", "next\x85line", "no\u00a0break space", "line\u2028separator", "zero\u200bwidth", "\ufeffBOM first.",
    "bidi \u202eevil\u202c.", "replacement \ufffd char.",
    # Unicode letters, case folding, normalisation
    "Ünïcödé café crème brûlée.", "Straße STRASSE strasse.", "İstanbul ISTANBUL.", "ﬁne ﬁsh ﬁne ﬁsh ﬁne ﬁsh ﬁne.",
    "ＡＢＣ fullwidth ＡＢＣ.", "e\u0301 combining e\u0301 e\u0301.", "日本語の文章です。", "١٢٣ ٤٥٦ digits.",
    "emoji 🐶 dog 🐶 dog.", "ǅemal ǆ Ǆ.", "Ω ω Ω ω.", "’Tis the dog’s bone.", "“Quoted.”", "a—b – c…",
    "The image shows a café.", "I can\u2019t describe this.", "A dog\u2026", "Done.\u201d", "Done.\u2019)",
    # ASCII edges of every pattern
    "...", "A dog...", "A dog... ", "A dog.)", 'A dog."', "A dog.')]", "A dog?!", "A dog", "A dog .", ".",
    "-", "- item", "\n- item", "a\n-", "a\n- b", "  * star", "# Title", "#hashtag", "## two", "####### seven",
    "a ** b", "__init__", "```code```", "[link](url)", "[a]b(c)", "&amp;", "&#123;", "&#1;", "&a;", "&abcdefghi;",
    "<b>", "< b>", "</ b>", "<3 love", "a < b > c", "<>", "http://x", "HTTPS://X.ORG", "ftp://f", "www.", "www.x",
    "awww.x", "(www.x)", "The image shows", "the IMAGE Shows a dog.", "  In this picture a cat.", "I'm sorry.",
    "I am sorry.", "i  '  m sorry", "Sorry, no.", "sorrow.", "Picture of a dog.", "An image of a dog.", "As an AI.",
    "this is a photo of x.", "Here is an image.", "IMG_2031.JPG DSC 0001 1920x1080 photo.", "'tis 'twas", "rock-'n'-roll",
    "-dash dash- -", "e.g. U.S.A. don't x' a--b", "word,word;word:word", "(parenthetical) {braces} [brackets]",
    "tab\tseparated\twords.", "CR\rLF\r\nmixed\n", "  leading and trailing  ", "a" * 300, "a " * 300,
    "a b c " * 50, "dog dog dog dog.", "1 2 3 1 2 3 1 2 3.", "A A A a a a.", "dog.dog.dog.dog", "_ _ _ _",
    "A red bus on a road, " * 5 + "end.",
]


def _random_plain(rng: random.Random) -> str:
    pieces = ["a", "A", "b", "Bc", "1", "_", " ", "  ", "\t", "\n", "\r", ".", "!", "?", "'", '"', ")", "]", "-", "*",
              "#", "<", ">", "&", ";", "/", ":", "(", "[", "{", "}", ",", "`", "www.", "http://", "...", "the image shows ",
              "**", "<b>", "&amp;", "sorry", "i'm ", "dog ", "cat ", "IMG_1 "]
    return "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 25)))


def _random_mixed(rng: random.Random) -> str:
    text = _random_plain(rng)
    if rng.random() < 0.3:
        position = rng.randrange(len(text) + 1)
        text = text[:position] + rng.choice(["é", "’", "…", "\x07", "\u00a0", "ß", "日", "\ufeff"]) + text[position:]
    return text


def _row_wise(monkeypatch: pytest.MonkeyPatch):
    """Make every caption take the row-wise reference."""
    monkeypatch.setattr(metrics, "_plain_columns", lambda strings: metrics._rowwise_columns(strings.to_pylist()))


def _assert_same_tables(monkeypatch, captions: list[str | None], image_ids=None, near=0.8) -> pd.DataFrame:
    keys = [f"k{i}" for i in range(len(captions))]
    columnar = metrics.compute_caption_metrics(keys, captions, near, image_ids=image_ids)
    with monkeypatch.context() as patch:
        _row_wise(patch)
        reference = metrics.compute_caption_metrics(keys, captions, near, image_ids=image_ids)
    for column in reference.columns:
        pd.testing.assert_series_equal(columnar[column], reference[column], check_exact=True, obj=column)
    assert columnar.equals(reference)
    return columnar


def _plain_share(captions: list[str | None]) -> float:
    texts = ["" if c is None else c for c in captions]
    return sum(1 for t in texts if all(ch in "\t\n\r" or " " <= ch <= "~" for ch in t)) / len(texts)


def test_real_captions_match_the_reference(monkeypatch) -> None:
    records = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]
    captions = [r["title"] for r in records if r["title"]] + [r["description"] for r in records if r["description"]]
    if TUXPAINT_STAMPS.is_dir():  # the descriptions --calibrate reads (scripts/test.sh installs the package)
        captions += [path.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0]
                     for path in sorted(TUXPAINT_STAMPS.rglob("*.txt"))]
    assert len(captions) > 1_500
    assert 0.5 < _plain_share(captions) < 1.0  # both paths are exercised
    table = _assert_same_tables(monkeypatch, captions)
    assert table["has_markup"].any() and table["has_url"].any() and table["is_cross_image_repeat"].any()


def test_hostile_strings_match_the_reference(monkeypatch) -> None:
    captions = HOSTILE + [None] + HOSTILE[::-1]  # repeated: duplicates and near duplicates across both paths
    images = [f"img{i % 50}" if i % 3 else None for i in range(len(captions))]
    table = _assert_same_tables(monkeypatch, captions, image_ids=images)
    for flag in ("has_control_chars", "has_markup", "has_url", "has_boilerplate_opening", "ends_with_ellipsis",
                 "is_exact_duplicate", "is_cross_image_repeat"):
        assert table[flag].any(), flag


def test_random_pattern_edges_match_the_reference(monkeypatch) -> None:
    rng = random.Random(19)
    captions = [_random_plain(rng) for _ in range(3_000)] + [_random_mixed(rng) for _ in range(1_000)]
    captions += captions[:200]  # exact repeats
    table = _assert_same_tables(monkeypatch, captions, near=0.5)
    assert table["is_near_duplicate"].any() and table["has_markup"].any() and table["ends_complete_sentence"].any()
    assert (table["longest_repeated_ngram_words"] >= 3).any() and (table["distinct_trigram_ratio"] < 1).any()


def test_chunks_and_mixed_paths_number_words_as_the_reference(monkeypatch) -> None:
    """Across chunks, and with plain and row-wise captions interleaved in a chunk, every word gets
    the vocabulary id ``bigram_shingles`` gives it (first occurrence over all captions)."""
    rng = random.Random(5)
    captions = [_random_mixed(rng) for _ in range(700)]
    vocabulary: dict[str, int] = {}
    expected = [bigram_shingles(comparison_words(text.strip()), vocabulary) if comparison_words(text.strip()) else set()
                for text in captions]
    for chunk_captions in (64, 1_000):  # several chunks; one chunk of both paths
        monkeypatch.setattr(metrics, "CHUNK_CAPTIONS", chunk_captions)
        columns = metrics._all_columns(captions, workers=1, progress=False)
        assert 0 < columns.rowwise_count < len(captions)
        assert columns.words == list(vocabulary)
        ragged = bigram_shingles_ragged(columns.word_codes, columns.word_counts)
        assert [ragged.set_of(row) for row in range(len(captions))] == expected
        assert np.array_equal(minhash_signatures(ragged), minhash_signatures(expected))


def test_worker_processes_and_chunks_give_the_same_table(monkeypatch) -> None:
    rng = random.Random(8)
    captions = [_random_mixed(rng) for _ in range(1_200)]
    keys = [f"k{i}" for i in range(len(captions))]
    whole = metrics.compute_caption_metrics(keys, captions, 0.5)
    monkeypatch.setattr(metrics, "CHUNK_CAPTIONS", 100)
    monkeypatch.setattr(metrics, "MIN_CAPTIONS_FOR_WORKERS", 200)
    assert metrics.compute_caption_metrics(keys, captions, 0.5).equals(whole)
    assert metrics.compute_caption_metrics(keys, captions, 0.5, workers=2).equals(whole)


def test_groups_are_exact_and_first_is_the_earliest() -> None:
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 50, size=2_000)
    groups = group(keys)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    assert np.array_equal(groups.first[groups.codes], first[inverse])
    assert np.array_equal(groups.later, pd.Series(keys).duplicated().to_numpy())
    assert np.array_equal(groups.repeated, pd.Series(keys).duplicated(keep=False).to_numpy())


def test_ragged_shingles_round_trip_sets() -> None:
    sets = [set(), {1}, {5, 2, 9}, set(), {2**40 + 3}]
    shingles = Shingles.from_sets(sets)
    assert [shingles.set_of(row) for row in range(len(sets))] == sets


def test_ragged_bigram_shingles_equal_the_per_caption_ones() -> None:
    captions = [[], ["a"], ["a", "b"], ["b", "a", "b", "a"], [], ["c"], ["c"], ["d", "a", "c"], []]
    vocabulary: dict[str, int] = {}
    expected = [bigram_shingles(words, vocabulary) if words else set() for words in captions]
    ids = np.array([vocabulary[word] for words in captions for word in words])
    ragged = bigram_shingles_ragged(ids, np.array([len(words) for words in captions]))
    assert [ragged.set_of(row) for row in range(len(captions))] == expected
    assert np.diff(ragged.offsets).tolist() == [0, 1, 1, 3, 0, 1, 1, 2, 0]


def test_earlier_equal_finds_every_repeat_and_its_first() -> None:
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 2**64 - 1, size=5_000, dtype=np.uint64)
    keys[rng.integers(0, 5_000, size=500)] = keys[rng.integers(0, 5_000, size=500)]  # plant repeats
    positions, firsts = earlier_equal(keys)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    expected = np.flatnonzero(first[inverse] != np.arange(keys.size))
    assert np.array_equal(positions, expected) and np.array_equal(firsts, first[inverse][expected])
    assert positions.size > 300


def test_known_set_sizes_only_skip_pairs_that_cannot_match() -> None:
    rng = random.Random(11)
    words = [f"w{i}" for i in range(40)]
    captions = [[rng.choice(words) for _ in range(rng.randrange(2, 30))] for _ in range(400)]
    captions += [caption[: max(2, len(caption) - rng.randrange(0, 4))] for caption in captions[:200]]
    vocabulary: dict[str, int] = {}
    sets = [bigram_shingles(caption, vocabulary) for caption in captions]
    eligible = np.ones(len(sets), dtype=bool)
    sizes = np.array([len(s) if i % 3 else -1 for i, s in enumerate(sets)])  # some unknown
    for threshold in (0.5, 0.8):
        plain = find_near_duplicates(sets, threshold, eligible)
        assert (plain >= 0).sum() > 50
        assert np.array_equal(find_near_duplicates(sets, threshold, eligible, sizes), plain)
