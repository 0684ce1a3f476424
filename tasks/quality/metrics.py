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

How they are computed: column at a time. Captions are processed in chunks as one byte buffer
(pyarrow): the whitespace words come from byte masks and become integer codes; each distinct word
of a chunk is measured once in Python by the definitions themselves (alphabetic or not, its
tokens, its comparison words), and every occurrence takes its word's values; the text that is
hashed, the repetition metrics and the duplicates come from integer codes
(``tasks.quality.columnar``), the pattern flags from RE2 over the whole column. Python runs per
distinct word and per caption only for the SHA-1. That columnar form is exact for "plain" captions, those made of printable ASCII, tab and
newlines: there Python's word and space classes, ``str.split``, NFC/NFKC and ``casefold`` and RE2's agree
byte for byte. Any other caption (non-ASCII letters, typographic quotes, control characters) is
computed by the row-wise reference, ``_text_metrics``, which is the definition. The tests check
that both give the same table on real and hostile captions.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import re
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from tasks.caption.normalize import canonical_for_dedup, comparison_words, normalize_caption
from tasks.quality.columnar import (
    Framed,
    Groups,
    byte_buffers,
    dictionary_codes,
    first_occurrence_order,
    group,
    offsets_of,
    pair_keys,
    row_of,
    stable_order,
    string_array,
)
from tasks.quality.near_duplicates import bigram_shingles_ragged, find_near_duplicates

METRICS_VERSION = 2
"""Bumped whenever a metric's definition changes (it is part of the suite version).
2: exact duplicates per image and case-sensitive; cross-image repeats; ellipsis; case-sensitive near duplicates."""

CHUNK_CAPTIONS = 131_072
"""Captions computed together: bounds the per-byte temporaries (a few hundred MB at most)."""

MIN_CAPTIONS_FOR_WORKERS = 2 * CHUNK_CAPTIONS
"""Below this many captions, starting worker processes costs more than it saves."""

_TOKEN = re.compile(r"\w+|[^\w\s]")
_WORD_RUN = re.compile(r"\w+")  # what comparison_words keeps of a whitespace-free word
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


# ---------------------------------------------------------------------------------------------
# The reference: one caption at a time (the definition; used for captions that are not plain).

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


# ---------------------------------------------------------------------------------------------
# Column at a time. "Plain" captions: printable ASCII plus tab, newline and carriage return.

_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _not_plain_positions(data: np.ndarray) -> np.ndarray:
    """Sorted positions of bytes outside the plain set (non-ASCII, DEL, controls but tab/newline/CR)."""
    controls = np.flatnonzero(data < 0x20)
    controls = controls[(data[controls] != 9) & (data[controls] != 10) & (data[controls] != 13)]
    return np.union1d(np.flatnonzero(data >= 0x7F), controls)


def _is_space_byte(data: np.ndarray) -> np.ndarray:
    """Whitespace among plain bytes (tab, newline, CR, space: Python's and RE2's ``\\s`` there)."""
    return data <= 0x20


def _re2(pattern: re.Pattern, *, applied_to_stripped_text: bool = False) -> str:
    """The RE2 form of one of the patterns above, for plain text (where RE2's ASCII ``\\w \\s \\b
    \\d`` and Python's Unicode ones agree). ``applied_to_stripped_text``: Python searches
    ``text.strip()``; RE2 searches the text itself, so a final ``$`` may follow whitespace."""
    text = re.sub(r"\\u([0-9a-fA-F]{4})", r"\\x{\1}", pattern.pattern)
    if applied_to_stripped_text and text.endswith("$"):
        text = text[:-1] + r"\s*$"
    if pattern.flags & re.IGNORECASE:
        text = "(?i)" + text
    return text


_RE2_COMPLETE_ENDING = _re2(_COMPLETE_ENDING, applied_to_stripped_text=True)
_RE2_ELLIPSIS_ENDING = _re2(_ELLIPSIS_ENDING, applied_to_stripped_text=True)
_RE2_BOILERPLATE_OPENING = _re2(_BOILERPLATE_OPENING)  # anchored by its ^; leading spaces are \W
_RE2_URL = _re2(_URL)
_RE2_MARKUP = _re2(_MARKUP)
# A prefilter: plain text has no control characters, and ignoring case only widens the markup pattern.
_RE2_ANY_SUSPECT = "(?i)" + "|".join(f"(?:{_re2(p).removeprefix('(?i)')})" for p in (_URL, _MARKUP))


def _matches(strings: pa.Array, pattern: str) -> np.ndarray:
    return pc.match_substring_regex(strings, pattern).to_numpy(zero_copy_only=False)


def _sum_between(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sums of ``values`` over each [offsets[i], offsets[i + 1])."""
    cumulative = np.zeros(values.size + 1, dtype=np.int64)
    np.cumsum(values, out=cumulative[1:])
    return np.diff(cumulative[offsets])


def _count_between(positions: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """How many of the sorted ``positions`` fall in each [offsets[i], offsets[i + 1])."""
    return np.diff(np.searchsorted(positions, offsets))


def _repetition_columns(ids: np.ndarray, counts: np.ndarray, vocabulary_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``_repetition`` for every row at once: (distinct trigram ratio, longest repeated n-gram).

    ``ids`` are the rows' words as integer codes in [0, vocabulary_size) (equal words, equal
    codes), ``counts`` the words per row. A word repeats in its row when the previous occurrence
    of the same word (a stable sort by word) is in the same row. Longer n-grams are grouped
    exactly (``group``), one word longer per step, keeping only positions whose n-gram repeats in
    its row: only those can start a longer repeat, and a trigram that repeats an earlier one is
    among them, which gives the distinct trigrams.
    """
    rows = len(counts)
    ratio = np.ones(rows, dtype=np.float64)
    longest = np.zeros(rows, dtype=np.int64)
    repeated_trigrams = np.zeros(rows, dtype=np.int64)
    if ids.size:
        row = np.repeat(np.arange(rows, dtype=np.int32), counts)  # 32-bit: the gathers below move half the bytes
        row_starts = offsets_of(counts)[:-1]
        small_ids = ids.astype(np.uint16 if vocabulary_size <= 1 << 16 else np.int32)
        by_word = stable_order(small_ids, vocabulary_size)
        word, word_row = small_ids[by_word], row[by_word]
        again = (word[1:] == word[:-1]) & (word_row[1:] == word_row[:-1])  # sorted i + 1 repeats sorted i
        repeated_sorted = np.zeros(ids.size, dtype=bool)
        repeated_sorted[1:] = again
        repeated_sorted[:-1] |= again
        at = np.sort(by_word[repeated_sorted])  # positions of words that occur twice in their row
        key = pair_keys(row[at].astype(np.int64), ids[at], vocabulary_size)
        length = 1
        while at.size:
            longest[row[at]] = length
            length += 1
            extendable = at + length <= row_starts[row[at]] + counts[row[at]]
            at, key = at[extendable], key[extendable]
            if at.size == 0:
                break
            grams = group(pair_keys(key, ids[at + length - 1], vocabulary_size))
            if length == 3:
                repeated_trigrams = np.bincount(row[at[grams.later]], minlength=rows)
            repeated = grams.repeated
            at, key = at[repeated], grams.codes[repeated]
    trigrams = counts - 2
    has_trigrams = trigrams > 0
    ratio[has_trigrams] = (trigrams[has_trigrams] - repeated_trigrams[has_trigrams]) / trigrams[has_trigrams]
    return ratio, longest


@dataclass
class _ChunkColumns:
    """The per-caption metrics of consecutive captions, plus what the cross-caption metrics need."""

    texts: pa.Array
    """The captions (large_string)."""
    num_words: np.ndarray
    num_tokens: np.ndarray
    trigram_ratio: np.ndarray
    longest_repeat: np.ndarray
    complete: np.ndarray
    ellipsis: np.ndarray
    boilerplate: np.ndarray
    url: np.ndarray
    markup: np.ndarray
    control: np.ndarray
    non_language: np.ndarray
    text_digest: np.ndarray
    """(n, 20) uint8: SHA-1 of ``normalize_caption(text)``."""
    word_codes: np.ndarray
    """``comparison_words`` of every caption as codes into ``words`` (int64, caption after caption)."""
    word_counts: np.ndarray
    words: list[str]
    """The distinct comparison words in order of first occurrence (codes index this list, no word twice)."""
    rowwise: np.ndarray
    """True for captions computed by the row-wise reference (not plain)."""

    @property
    def rowwise_count(self) -> int:
        return int(self.rowwise.sum())


_ROW_COLUMNS = ("num_words", "num_tokens", "trigram_ratio", "longest_repeat", "complete", "ellipsis", "boilerplate",
                "url", "markup", "control", "non_language", "text_digest", "word_counts", "rowwise")


def _sha1_digests(buffer: bytes, lengths: np.ndarray) -> np.ndarray:
    view = memoryview(buffer)
    bounds = offsets_of(lengths).tolist()
    digests = b"".join([hashlib.sha1(view[a:b]).digest() for a, b in zip(bounds[:-1], bounds[1:])])
    return np.frombuffer(digests, dtype=np.uint8).reshape(len(lengths), 20)


def _plain_columns(strings: pa.Array) -> _ChunkColumns:
    """The metrics of plain captions, computed column at a time (identical to ``_text_metrics``)."""
    count = len(strings)
    framed = Framed.of(strings)
    text = ~_is_space_byte(framed.data)

    # Whitespace words (str.split): num_words, and, one distinct word at a time (Python, the
    # definitions themselves): alphabetic or not, its tokens, its comparison words (no token and
    # no \w run crosses whitespace, so a caption's are those of its words in order).
    raw = framed.runs(text)
    raw_strings = framed.run_strings(text, raw)
    raw_codes, raw_words = dictionary_codes(raw_strings)
    alphabetic = np.fromiter((_is_alphabetic_word(word) for word in raw_words), dtype=bool, count=len(raw_words))
    tokens_of = np.fromiter((len(_TOKEN.findall(word)) for word in raw_words), dtype=np.int64, count=len(raw_words))
    vocabulary: dict[str, int] = {}
    parts = [[vocabulary.setdefault(part, len(vocabulary)) for part in _WORD_RUN.findall(word)] for word in raw_words]
    raw_offsets = offsets_of(raw.counts)
    has_words = raw.counts > 0
    non_language = np.zeros(count, dtype=np.float64)
    non_language_words = _count_between(np.flatnonzero(~alphabetic[raw_codes]), raw_offsets)
    non_language[has_words] = non_language_words[has_words] / raw.counts[has_words]
    num_tokens = _sum_between(tokens_of[raw_codes], raw_offsets)

    # comparison_words: each word occurrence expanded into its parts. The distinct words come in
    # order of first occurrence (arrow's dictionary order), so their parts are numbered in order
    # of first occurrence too. The repetition metrics use them case folded (canonical_for_dedup).
    part_counts = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    part_ids = np.fromiter((i for p in parts for i in p), dtype=np.int64, count=int(part_counts.sum()))
    occurrence_parts = part_counts[raw_codes]
    expanded = np.repeat(offsets_of(part_counts)[:-1][raw_codes], occurrence_parts)
    expanded += np.arange(expanded.size) - np.repeat(offsets_of(occurrence_parts)[:-1], occurrence_parts)
    word_codes, words = part_ids[expanded], list(vocabulary)
    word_counts = _sum_between(occurrence_parts, raw_offsets)
    folded_codes, folded = pd.factorize(np.array([word.casefold() for word in words], dtype=object))
    trigram_ratio, longest_repeat = _repetition_columns(folded_codes[word_codes], word_counts, len(folded))

    # normalize_caption: the whitespace words joined by one space; its SHA-1 is the text hash.
    word_lists = pa.LargeListArray.from_arrays(pa.array(raw_offsets), raw_strings)
    normalized, normalized_offsets = byte_buffers(pc.binary_join(word_lists, pa.scalar(" ", pa.large_string())))
    text_digest = _sha1_digests(normalized.tobytes(), np.diff(normalized_offsets))

    # Pattern flags: one RE2 pass over the column each; URL and markup only where the
    # combined pattern found something.
    ellipsis = _matches(strings, _RE2_ELLIPSIS_ENDING)
    url = np.zeros(count, dtype=bool)
    markup = np.zeros(count, dtype=bool)
    suspect = np.flatnonzero(_matches(strings, _RE2_ANY_SUSPECT))
    if suspect.size:
        suspects = strings.take(pa.array(suspect))
        url[suspect] = _matches(suspects, _RE2_URL)
        markup[suspect] = _matches(suspects, _RE2_MARKUP)
    return _ChunkColumns(
        texts=strings,
        num_words=raw.counts,
        num_tokens=num_tokens,
        trigram_ratio=trigram_ratio,
        longest_repeat=longest_repeat,
        complete=_matches(strings, _RE2_COMPLETE_ENDING) & ~ellipsis,
        ellipsis=ellipsis,
        boilerplate=_matches(strings, _RE2_BOILERPLATE_OPENING),
        url=url,
        markup=markup,
        control=np.zeros(count, dtype=bool),  # plain text has no control characters
        non_language=non_language,
        text_digest=text_digest,
        word_codes=word_codes,
        word_counts=word_counts,
        words=words,
        rowwise=np.zeros(count, dtype=bool),
    )


def _rowwise_columns(texts: list[str]) -> _ChunkColumns:
    """The same columns from the row-wise reference (``_text_metrics``), for captions that are not plain."""
    rows = [_text_metrics(text) for text in texts]
    vocabulary: dict[str, int] = {}
    word_lists = [row[12] for row in rows]
    codes = [vocabulary.setdefault(word, len(vocabulary)) for words in word_lists for word in words]

    def column(index: int, dtype: type) -> np.ndarray:
        return np.fromiter((row[index] for row in rows), dtype=dtype, count=len(rows))

    digests = b"".join(hashlib.sha1(row[11].encode("utf-8")).digest() for row in rows)
    return _ChunkColumns(
        texts=pa.array(texts, type=pa.large_string()),
        num_words=column(0, np.int64),
        num_tokens=column(1, np.int64),
        trigram_ratio=column(2, np.float64),
        longest_repeat=column(3, np.int64),
        complete=column(4, bool),
        ellipsis=column(5, bool),
        boilerplate=column(6, bool),
        url=column(7, bool),
        markup=column(8, bool),
        control=column(9, bool),
        non_language=column(10, np.float64),
        text_digest=np.frombuffer(digests, dtype=np.uint8).reshape(len(rows), 20),
        word_codes=np.asarray(codes, dtype=np.int64),
        word_counts=np.fromiter((len(words) for words in word_lists), dtype=np.int64, count=len(rows)),
        words=list(vocabulary),
        rowwise=np.ones(len(rows), dtype=bool),
    )


def _chunk_columns(texts: list[str]) -> _ChunkColumns:
    """Plain captions column at a time, the others row-wise, merged back into input order."""
    strings = pa.array(texts, type=pa.large_string())
    data, offsets = byte_buffers(strings)
    not_plain = np.unique(np.searchsorted(offsets, _not_plain_positions(data), side="right") - 1)
    if not_plain.size == 0:
        return _plain_columns(strings)
    plain = np.ones(len(texts), dtype=bool)
    plain[not_plain] = False
    return _interleave(strings, (np.flatnonzero(plain), _plain_columns(strings.filter(pa.array(plain)))),
                       (not_plain, _rowwise_columns([texts[i] for i in not_plain.tolist()])))


def _interleave(strings: pa.Array, *parts: tuple[np.ndarray, _ChunkColumns]) -> _ChunkColumns:
    """The columns of ``strings`` from parts that computed disjoint subsets of its rows (row indices, columns)."""
    merged: dict[str, object] = {}
    for name in _ROW_COLUMNS:
        values = getattr(parts[0][1], name)
        column = np.empty((len(strings),) + values.shape[1:], dtype=values.dtype)
        for rows, part in parts:
            column[rows] = getattr(part, name)
        merged[name] = column
    # Each part's word codes, placed at its rows' words, then one code per distinct word (a word may
    # be in several parts' lists), numbered by first occurrence.
    word_offsets = offsets_of(merged["word_counts"])
    word_codes = np.empty(int(word_offsets[-1]), dtype=np.int64)
    distinct: dict[str, int] = {}
    for rows, part in parts:
        same_word = np.fromiter((distinct.setdefault(word, len(distinct)) for word in part.words),
                                dtype=np.int64, count=len(part.words))
        within = np.arange(part.word_codes.size) - offsets_of(part.word_counts)[:-1][row_of(part.word_counts)]
        word_codes[word_offsets[rows][row_of(part.word_counts)] + within] = same_word[part.word_codes]
    renumbered = first_occurrence_order(word_codes, len(distinct))
    ordered_words = [""] * int((renumbered >= 0).sum())
    for word, new in zip(distinct, renumbered.tolist()):
        if new >= 0:
            ordered_words[new] = word
    return _ChunkColumns(texts=strings, **merged, word_codes=renumbered[word_codes], words=ordered_words)


def _concatenate(chunks: list[_ChunkColumns]) -> _ChunkColumns:
    """Columns of consecutive chunks -> one, its words numbered over all chunks in order of first
    occurrence (each chunk's list is in that order within the chunk)."""
    if len(chunks) == 1:
        return chunks[0]
    vocabulary: dict[str, int] = {}
    word_codes = np.empty(sum(chunk.word_codes.size for chunk in chunks), dtype=np.int64)
    start = 0
    for chunk in chunks:
        renumbered = np.fromiter((vocabulary.setdefault(word, len(vocabulary)) for word in chunk.words),
                                 dtype=np.int64, count=len(chunk.words))
        np.take(renumbered, chunk.word_codes, out=word_codes[start : start + chunk.word_codes.size])
        start += chunk.word_codes.size
    return _ChunkColumns(
        texts=pa.concat_arrays([chunk.texts for chunk in chunks]),
        **{name: np.concatenate([getattr(chunk, name) for chunk in chunks]) for name in _ROW_COLUMNS},
        word_codes=word_codes,
        words=list(vocabulary),
    )


def _all_columns(texts: list[str], workers: int, progress: bool) -> _ChunkColumns:
    """Every caption's columns, computed chunk by chunk (in ``workers`` processes when > 1)."""
    if not texts:
        return _rowwise_columns([])
    chunks = [texts[i : i + CHUNK_CAPTIONS] for i in range(0, len(texts), CHUNK_CAPTIONS)]
    results: list[_ChunkColumns] = []
    with ExitStack() as stack:
        bar = stack.enter_context(
            tqdm(total=len(texts), desc="caption metrics", unit="caption", disable=not progress, mininterval=2.0)
        )
        if workers > 1 and len(texts) >= MIN_CAPTIONS_FOR_WORKERS:
            # spawn, not fork: the caller may be a threaded Prefect worker, and forking threads can deadlock.
            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")))
            computed = pool.map(_chunk_columns, chunks)
        else:
            computed = map(_chunk_columns, chunks)
        for columns in computed:
            results.append(columns)
            bar.update(len(columns.num_words))
    return _concatenate(results)


def _string_column(values: pa.Array) -> pd.Series:
    """A pandas ``string`` column without a Python-object round trip (pyarrow-backed, as ``dtype="string"``)."""
    return pd.Series(pd.arrays.ArrowStringArray(values.cast(pa.large_string())))


def _hex(digests: np.ndarray) -> pa.Array:
    """Lower-case hex strings of the rows of a (n, k) uint8 array."""
    digits = np.empty((digests.shape[0], digests.shape[1] * 2), dtype=np.uint8)
    digits[:, 0::2] = _HEX_DIGITS[digests >> 4]
    digits[:, 1::2] = _HEX_DIGITS[digests & 15]
    return string_array(digits.ravel(), np.full(digests.shape[0], digits.shape[1], dtype=np.int64))


def _text_groups(digests: np.ndarray) -> Groups:
    """Groups of equal texts by their SHA-1: sorted on the first 8 bytes, then every duplicate's
    full digest is compared with its group's first (equal 8-byte prefixes of different digests
    would fall back to grouping on all 20 bytes)."""
    prefixes = np.ascontiguousarray(digests[:, :8]).view(np.uint64).ravel()
    groups = group(prefixes)
    later = np.flatnonzero(groups.later)
    if np.array_equal(digests[later], digests[groups.first[groups.codes[later]]]):
        return groups
    full = np.unique(np.ascontiguousarray(digests).view(np.dtype((np.void, 20))).ravel(), return_inverse=True)[1]
    return group(full.astype(np.int64))


def _image_codes(image_ids: Sequence[str | None] | None, count: int) -> np.ndarray:
    """An int64 code per row, equal for equal image ids; unknown images (None or "") are all distinct."""
    if image_ids is None:
        return np.arange(count, dtype=np.int64)
    images = pa.array([image or None for image in image_ids], type=pa.large_string())
    encoded = pc.dictionary_encode(images)
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN
    unknown = np.isnan(codes)
    codes = np.where(unknown, 0, codes).astype(np.int64)
    codes[unknown] = len(encoded.dictionary) + np.arange(int(unknown.sum()))
    return codes


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
    bar (tqdm, stderr). ``workers`` > 1 computes chunks of captions in that many processes
    (duplicates are found in this one); the table is identical for any number of workers.
    """
    if len(keys) != len(captions):
        raise ValueError(f"{len(keys)} keys but {len(captions)} captions")
    count = len(keys)
    if image_ids is not None and len(image_ids) != count:
        raise ValueError(f"{count} keys but {len(image_ids)} image ids")
    texts = ["" if caption is None else str(caption) for caption in captions]
    columns = _all_columns(texts, workers, progress)
    num_words = columns.num_words
    has_text = num_words > 0

    texts_grouped = _text_groups(columns.text_digest)
    text_seen = texts_grouped.later & has_text
    samples = group(pair_keys(_image_codes(image_ids, count), texts_grouped.codes, texts_grouped.count))
    exact_duplicate = samples.later & has_text
    cross_image_repeat = text_seen & ~exact_duplicate
    near_of = np.full(count, -1, dtype=np.int64)
    if near_duplicate_jaccard is not None:
        # Word codes number the distinct words in order of first occurrence over all captions, as
        # bigram_shingles numbers its vocabulary.
        shingles = bigram_shingles_ragged(columns.word_codes, columns.word_counts)
        # A plain caption with no repeated (case-folded) word bigram has as many distinct shingles
        # as it has shingles: sizes that let the search skip pairs that cannot reach the threshold.
        sizes = np.where(~columns.rowwise & (columns.longest_repeat < 2), np.diff(shingles.offsets), -1)
        near_of = find_near_duplicates(shingles, near_duplicate_jaccard, (num_words >= 2) & ~text_seen, sizes)
    near_duplicate = near_of >= 0
    key_strings = pa.array(list(keys), type=pa.large_string())
    near_keys = pc.if_else(pa.array(near_duplicate), key_strings.take(pa.array(np.maximum(near_of, 0))), "")
    image_strings = pa.array(
        [""] * count if image_ids is None else ["" if image is None else str(image) for image in image_ids],
        type=pa.large_string(),
    )

    return pd.DataFrame(
        {
            "key": _string_column(key_strings),
            "caption": _string_column(columns.texts),
            "image_id": _string_column(image_strings),
            "num_words": num_words,
            "num_tokens": columns.num_tokens,
            "distinct_trigram_ratio": columns.trigram_ratio,
            "longest_repeated_ngram_words": columns.longest_repeat,
            "ends_complete_sentence": columns.complete,
            "ends_with_ellipsis": columns.ellipsis,
            "text_hash": _string_column(_hex(columns.text_digest)),
            "is_exact_duplicate": exact_duplicate,
            "is_cross_image_repeat": cross_image_repeat,
            "is_near_duplicate": near_duplicate,
            "near_duplicate_of": _string_column(near_keys),
            "is_duplicate": exact_duplicate.astype(np.int64),
            "is_repeated_caption": (cross_image_repeat | near_duplicate).astype(np.int64),
            "has_boilerplate_opening": columns.boilerplate,
            "has_url": columns.url,
            "has_markup": columns.markup,
            "has_control_chars": columns.control,
            "non_language_token_share": columns.non_language,
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
