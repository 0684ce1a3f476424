"""Per-caption quality metrics: one pandas row per caption, the table the GX caption suite validates.

Every metric is defined here, once (the GX suite in ``suites`` only states bounds on these columns).
Columns:

    key, caption, image_id            sample key, the caption as stored ("" when missing), the image's
                                      sha256 ("" when unknown: such rows count as distinct images)
    num_words, num_tokens             whitespace words; tokens = words and punctuation marks
    distinct_trigram_ratio            distinct word trigrams / word trigrams (1.0 below 3 words)
    longest_repeated_ngram_words      longest word n-gram occurring at least twice (0 = none)
    ends_complete_sentence            ends in . ! or ? (optionally closed by a quote/bracket), no ellipsis
    ends_with_ellipsis                ends in "..." or "\u2026" (text cut off)
    text_hash                         sha1 of the exact text (NFC, whitespace collapsed, case kept)
    is_exact_duplicate                the same image with the same exact text as an earlier sample
    is_cross_image_repeat             the same exact text as an earlier sample of a different image
    is_near_duplicate, near_duplicate_of   case-sensitive word-bigram Jaccard >= threshold with an
                                      earlier caption of other text (its key); all False when not checked
    is_duplicate                      is_exact_duplicate as 0/1 (aggregated as the duplicate rate)
    is_repeated_caption               cross-image repeat or near duplicate as 0/1 (their rate)
    has_boilerplate_opening           "The image shows...", "In this picture...", refusals
    has_url, has_markup, has_control_chars
    non_language_token_share          share of words that are not alphabetic (ids, numbers, symbols)

"Exact" means case-sensitive after whitespace normalisation: "The letter A." and "The letter a."
are two captions. A caption repeated for a different image is not a duplicate sample; it is
measured on its own (``is_cross_image_repeat``), because for labels it is normal and for teacher
captions it is the sign of a collapsed teacher.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from tasks.caption.normalize import canonical_for_dedup, comparison_words, normalize_caption
from tasks.quality.near_duplicates import bigram_shingles, find_near_duplicates

METRICS_VERSION = 2
"""Bumped whenever a metric's definition changes (it is part of the suite version).
2: exact duplicates per image and case-sensitive; cross-image repeats; ellipsis; case-sensitive near duplicates."""

MIN_CAPTIONS_FOR_WORKERS = 20_000
"""Below this many captions, starting worker processes costs more than it saves."""

_TOKEN = re.compile(r"\w+|[^\w\s]")
_COMPLETE_ENDING = re.compile(r"[.!?][\"'\u201d\u2019)\]]*$")
_ELLIPSIS_ENDING = re.compile(r"(\.\.\.|\u2026)[\"'\u201d\u2019)\]]*$")
_BOILERPLATE_OPENING = re.compile(
    r"^\W*(?:"
    r"(?:the|this)\s+(?:image|picture|photo|photograph|scene|illustration|graphic)\s+"
    r"(?:shows|depicts|features|displays|presents|contains|captures|showcases|portrays|is\s+of|is\s+a)\b"
    r"|in\s+(?:this|the)\s+(?:image|picture|photo|photograph|scene)\b"
    r"|(?:here\s+is|this\s+is)\s+(?:an?\s+)?(?:image|picture|photo|photograph)\b"
    r"|(?:an?\s+)?(?:image|picture|photo|photograph)\s+of\b"
    r"|as\s+an\s+ai\b|i\s*'?\s*a?m\s+sorry\b|i\s+(?:cannot|can't|can\u2019t)\b|sorry\b"
    r")",
    re.IGNORECASE,
)
_URL = re.compile(r"(?:https?|ftp)://|\bwww\.\S", re.IGNORECASE)
_MARKUP = re.compile(
    r"<\s*/?\s*[a-zA-Z][^<>]*>"  # HTML/XML tags, including a leaked <image> placeholder
    r"|&(?:[a-zA-Z]{2,8}|#\d{2,6});"  # HTML entities
    r"|\*\*|__|```|\[[^\]]*\]\([^)]*\)"  # markdown emphasis, code fences, links
    r"|(?:^|\n)\s*(?:#{1,6}\s|[-*]\s)",  # markdown headings and bullet lists
)
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff\ufffd]")
_ANY_SUSPECT = re.compile("|".join(f"(?:{p.pattern})" for p in (_URL, _MARKUP, _CONTROL)), re.IGNORECASE)
_EDGE_PUNCTUATION = "\"'()[]{}.,;:!?\u201c\u201d\u2018\u2019"


def _repetition(words: list[str]) -> tuple[float, int]:
    """(distinct trigram ratio, longest word n-gram that occurs at least twice)."""
    trigram_ratio = 1.0
    if len(words) >= 3:
        trigrams = list(zip(words, words[1:], words[2:]))
        trigram_ratio = len(set(trigrams)) / len(trigrams)
    # A repeated n-gram implies a repeated (n-1)-gram, so the first n without a repeat ends the scan.
    longest = 0
    for n in range(1, len(words)):
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        if len(set(grams)) == len(grams):
            break
        longest = n
    return trigram_ratio, longest


def _is_alphabetic_word(word: str) -> bool:
    # str methods instead of a regex: this runs once per word of every caption.
    core = word.strip(_EDGE_PUNCTUATION)
    return core.isalpha() or (core.replace("'", "").replace("\u2019", "").replace("-", "").isalpha()
                              and core[0].isalpha() and core[-1].isalpha())


def _non_language_share(raw_words: list[str]) -> float:
    if not raw_words:
        return 0.0
    return sum(1 for word in raw_words if not _is_alphabetic_word(word)) / len(raw_words)


def _text_metrics(text: str) -> tuple:
    """Per-caption metrics that need no other caption (runs in worker processes when asked)."""
    stripped = text.strip()
    raw_words = stripped.split()
    dedup_key = canonical_for_dedup(stripped)
    ellipsis = bool(_ELLIPSIS_ENDING.search(stripped))
    trigram_ratio, longest_repeat = _repetition(dedup_key.split())
    url = markup = control = False
    if _ANY_SUSPECT.search(text):  # one scan for the common clean case, three for the rest
        url = bool(_URL.search(stripped))
        markup = bool(_MARKUP.search(text))
        control = bool(_CONTROL.search(text))
    return (
        len(raw_words),
        len(_TOKEN.findall(stripped)),
        trigram_ratio,
        longest_repeat,
        bool(_COMPLETE_ENDING.search(stripped)) and not ellipsis,
        ellipsis,
        bool(_BOILERPLATE_OPENING.match(stripped)),
        url,
        markup,
        control,
        _non_language_share(raw_words),
        normalize_caption(text) or "",
        comparison_words(stripped),
    )


def _text_metrics_chunk(texts: list[str]) -> list[tuple]:
    return [_text_metrics(text) for text in texts]


def _iter_text_metrics(texts: list[str], workers: int, progress: bool):
    bar = tqdm(total=len(texts), desc="caption metrics", unit="caption", disable=not progress, mininterval=2.0)
    if workers <= 1 or len(texts) < MIN_CAPTIONS_FOR_WORKERS:
        for text in texts:
            yield _text_metrics(text)
            bar.update(1)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        chunk = max(1, min(5_000, len(texts) // (4 * workers)))
        # spawn, not fork: the caller may be a threaded Prefect worker, and forking threads can deadlock.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for rows in pool.map(_text_metrics_chunk, [texts[i : i + chunk] for i in range(0, len(texts), chunk)]):
                yield from rows
                bar.update(len(rows))
    bar.close()


def compute_caption_metrics(
    keys: Sequence[str],
    captions: Sequence[str | None],
    near_duplicate_jaccard: float | None = 0.8,
    progress: bool = False,
    workers: int = 1,
    image_ids: Sequence[str | None] | None = None,
) -> pd.DataFrame:
    """The metrics table, one row per caption in input order (see the module docstring for columns).

    ``image_ids`` (the image's sha256 per caption) separate duplicate samples (same image, same
    text) from a caption repeated for another image; without them every row is its own image.
    ``near_duplicate_jaccard`` None skips the near-duplicate search. ``progress`` shows a progress
    bar (tqdm, stderr): 10^7 captions take minutes. ``workers`` > 1 computes the per-caption metrics
    in that many processes (duplicates are found in this one); the table is identical for any
    number of workers.
    """
    if len(keys) != len(captions):
        raise ValueError(f"{len(keys)} keys but {len(captions)} captions")
    count = len(keys)
    if image_ids is not None and len(image_ids) != count:
        raise ValueError(f"{count} keys but {len(image_ids)} image ids")
    texts = ["" if caption is None else str(caption) for caption in captions]
    num_words = np.zeros(count, dtype=np.int64)
    num_tokens = np.zeros(count, dtype=np.int64)
    trigram_ratio = np.ones(count, dtype=np.float64)
    longest_repeat = np.zeros(count, dtype=np.int64)
    complete = np.zeros(count, dtype=bool)
    ellipsis = np.zeros(count, dtype=bool)
    boilerplate = np.zeros(count, dtype=bool)
    url = np.zeros(count, dtype=bool)
    markup = np.zeros(count, dtype=bool)
    control = np.zeros(count, dtype=bool)
    non_language = np.zeros(count, dtype=np.float64)
    text_hashes: list[str] = []
    shingles: list[set[int]] = []
    vocabulary: dict[str, int] = {}
    for index, row in enumerate(_iter_text_metrics(texts, workers, progress)):
        (num_words[index], num_tokens[index], trigram_ratio[index], longest_repeat[index], complete[index],
         ellipsis[index], boilerplate[index], url[index], markup[index], control[index], non_language[index],
         exact_text, words) = row
        text_hashes.append(hashlib.sha1(exact_text.encode("utf-8")).hexdigest())
        if near_duplicate_jaccard is not None:
            shingles.append(bigram_shingles(words, vocabulary) if words else set())

    hash_series = pd.Series(text_hashes, dtype="string")
    # Unknown images (None or "") are distinct images: give each its own id for the pair test.
    images = pd.Series(
        [image or f"\0row{index}" for index, image in enumerate(image_ids)] if image_ids is not None
        else [f"\0row{index}" for index in range(count)],
        dtype="string",
    )
    has_text = num_words > 0
    pairs = pd.DataFrame({"image": images, "text": hash_series})
    exact_duplicate = pairs.duplicated(keep="first").to_numpy() & has_text
    text_seen = hash_series.duplicated(keep="first").to_numpy() & has_text
    cross_image_repeat = text_seen & ~exact_duplicate
    near_of = np.full(count, -1, dtype=np.int64)
    if near_duplicate_jaccard is not None:
        near_of = find_near_duplicates(shingles, near_duplicate_jaccard, (num_words >= 2) & ~text_seen)
    near_duplicate = near_of >= 0
    key_array = np.asarray(list(keys), dtype=object)
    near_keys = np.where(near_duplicate, key_array[np.maximum(near_of, 0)], "")

    return pd.DataFrame(
        {
            "key": pd.Series(key_array, dtype="string"),
            "caption": pd.Series(texts, dtype="string"),
            "image_id": pd.Series(
                ["" if image_ids is None or image_ids[i] is None else str(image_ids[i]) for i in range(count)],
                dtype="string",
            ),
            "num_words": num_words,
            "num_tokens": num_tokens,
            "distinct_trigram_ratio": trigram_ratio,
            "longest_repeated_ngram_words": longest_repeat,
            "ends_complete_sentence": complete,
            "ends_with_ellipsis": ellipsis,
            "text_hash": hash_series,
            "is_exact_duplicate": exact_duplicate,
            "is_cross_image_repeat": cross_image_repeat,
            "is_near_duplicate": near_duplicate,
            "near_duplicate_of": pd.Series(near_keys, dtype="string"),
            "is_duplicate": exact_duplicate.astype(np.int64),
            "is_repeated_caption": (cross_image_repeat | near_duplicate).astype(np.int64),
            "has_boilerplate_opening": boilerplate,
            "has_url": url,
            "has_markup": markup,
            "has_control_chars": control,
            "non_language_token_share": non_language,
        }
    )


def summarize_caption_metrics(table: pd.DataFrame) -> dict[str, float]:
    """Dataset-level statistics of a metrics table (the numbers compared between versions)."""
    if table.empty:
        return {"num_captions": 0}
    return {
        "num_captions": int(len(table)),
        "mean_words": float(table["num_words"].mean()),
        "median_words": float(table["num_words"].median()),
        "p95_tokens": float(table["num_tokens"].quantile(0.95)),
        "mean_distinct_trigram_ratio": float(table["distinct_trigram_ratio"].mean()),
        "complete_sentence_rate": float(table["ends_complete_sentence"].mean()),
        "truncated_rate": float(table["ends_with_ellipsis"].mean()),
        "exact_duplicate_rate": float(table["is_exact_duplicate"].mean()),
        "cross_image_repeat_rate": float(table["is_cross_image_repeat"].mean()),
        "near_duplicate_rate": float(table["is_near_duplicate"].mean()),
        "duplicate_rate": float(table["is_duplicate"].mean()),
        "repeated_caption_rate": float(table["is_repeated_caption"].mean()),
        "distinct_caption_share": float(table["text_hash"].nunique() / len(table)),
        "boilerplate_rate": float(table["has_boilerplate_opening"].mean()),
        "url_rate": float(table["has_url"].mean()),
        "markup_rate": float(table["has_markup"].mean()),
        "control_char_rate": float(table["has_control_chars"].mean()),
        "mean_non_language_token_share": float(table["non_language_token_share"].mean()),
    }


__all__ = ["METRICS_VERSION", "compute_caption_metrics", "summarize_caption_metrics"]
