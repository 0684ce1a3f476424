"""Column-at-a-time building blocks for the caption metrics: strings as one byte buffer plus offsets.

A batch of captions is a pyarrow ``large_string`` array: every caption's UTF-8 bytes in one buffer
and ``offsets`` (``len + 1`` int64) where caption ``i`` is ``data[offsets[i]:offsets[i + 1]]``.
``Framed`` copies that buffer with a newline before every caption and after the last, so that a
run of bytes of one class (a word, a run of spaces) never crosses from one caption into the next
and every per-caption quantity is a few whole-buffer numpy passes plus a ``searchsorted``. Words
are ragged arrays: one flat array and per-row counts. Groups of equal values (n-grams, texts) are
found by sorting integer keys (``group``): exact, no hash collisions. Nothing here loops over
captions in Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SEPARATOR = 10
"""The byte framing every caption (a newline: whitespace, not a word character)."""


def byte_buffers(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(data uint8, offsets int64 starting at 0) of a ``large_string`` array without nulls (zero-copy)."""
    if array.type != pa.large_string():
        array = array.cast(pa.large_string())
    if array.null_count:
        raise ValueError("byte_buffers needs an array without nulls")
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64, count=len(array) + 1, offset=array.offset * 8)
    if buffers[2] is None or offsets[-1] == offsets[0]:
        return np.zeros(0, dtype=np.uint8), np.zeros(len(array) + 1, dtype=np.int64)
    data = np.frombuffer(buffers[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return data, offsets - offsets[0]


def offsets_of(counts: np.ndarray) -> np.ndarray:
    """Offsets (``len + 1``) of a ragged array with these per-row counts."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def row_of(counts: np.ndarray) -> np.ndarray:
    """Row index of every element of a ragged array with these per-row counts."""
    return np.repeat(np.arange(len(counts), dtype=np.int64), counts)


def string_array(data: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """A ``large_string`` array over ``data`` (uint8, the strings back to back) with these lengths."""
    return pa.Array.from_buffers(
        pa.large_string(), len(lengths), [None, pa.py_buffer(offsets_of(lengths)), pa.py_buffer(np.ascontiguousarray(data))]
    )


@dataclass(frozen=True)
class Runs:
    """Maximal runs of bytes of one class per caption (e.g. words: runs of non-space bytes)."""

    starts: np.ndarray
    """Index in the framed buffer where each run starts (int64, caption after caption)."""
    ends: np.ndarray
    """Index one past each run's end."""
    counts: np.ndarray
    """Runs per caption."""

    @property
    def lengths(self) -> np.ndarray:
        return self.ends - self.starts


@dataclass(frozen=True)
class Framed:
    """Captions back to back, each preceded by ``SEPARATOR``, plus one after the last."""

    data: np.ndarray
    """uint8."""
    starts: np.ndarray
    """Index of each caption's first byte."""
    ends: np.ndarray
    """Index one past each caption's last byte (its following separator)."""

    @classmethod
    def of(cls, strings: pa.Array) -> "Framed":
        """Frame a ``large_string`` array without nulls."""
        if len(strings) == 0:
            return cls(data=np.array([SEPARATOR], dtype=np.uint8), starts=np.zeros(0, np.int64), ends=np.zeros(0, np.int64))
        # Each caption followed by the separator (one C++ pass), and one more in front of all.
        empty, separator = pa.scalar("", pa.large_string()), pa.scalar(chr(SEPARATOR), pa.large_string())
        joined, offsets = byte_buffers(pc.binary_join_element_wise(strings, empty, separator))
        return cls(
            data=np.concatenate((np.array([SEPARATOR], dtype=np.uint8), joined)),
            starts=offsets[:-1] + 1,
            ends=offsets[1:],
        )

    def count_per_row(self, positions: np.ndarray) -> np.ndarray:
        """How many of the sorted byte ``positions`` fall in each caption."""
        return np.searchsorted(positions, self.ends) - np.searchsorted(positions, self.starts)

    def runs(self, member: np.ndarray) -> Runs:
        """Maximal runs of ``member`` bytes (a bool mask over ``data``, False on separators)."""
        # The buffer starts and ends with a separator (not a member), so changes alternate start, end.
        changes = np.flatnonzero(member[1:] != member[:-1]) + 1
        starts, ends = changes[0::2], changes[1::2]
        return Runs(starts=starts, ends=ends, counts=self.count_per_row(starts))

    def run_strings(self, member: np.ndarray, runs: Runs) -> pa.Array:
        """The runs' bytes as strings (``member`` is the mask the runs were found with)."""
        return string_array(self.data[member], runs.lengths)


def dictionary_codes(strings: pa.Array) -> tuple[np.ndarray, list[str]]:
    """(int64 code per string, the distinct strings in order of first occurrence)."""
    encoded = pc.dictionary_encode(strings)
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_pylist()


@dataclass(frozen=True)
class Groups:
    """Groups of equal keys: ``codes`` number the groups (in key order), ``size`` their sizes."""

    codes: np.ndarray
    """int64 group number per element."""
    count: int
    """Number of distinct keys."""
    first: np.ndarray
    """Per group, the position of its first element."""

    @property
    def repeated(self) -> np.ndarray:
        """True where the key occurs more than once."""
        return np.bincount(self.codes, minlength=self.count)[self.codes] > 1

    @property
    def later(self) -> np.ndarray:
        """True where an earlier element has the same key (the duplicates, the first one excluded)."""
        return self.first[self.codes] != np.arange(self.codes.size)


def group(keys: np.ndarray) -> Groups:
    """Exact groups of equal integer keys, by sorting (no hashing, so no collisions)."""
    if keys.size == 0:
        return Groups(codes=np.zeros(0, dtype=np.int64), count=0, first=np.zeros(0, dtype=np.int64))
    order = np.argsort(keys)
    ordered = keys[order]
    new = np.empty(keys.size, dtype=bool)
    new[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    codes = np.empty(keys.size, dtype=np.int64)
    codes[order] = np.cumsum(new) - 1
    # The sort is not stable: a group's first element is its smallest position.
    first = np.minimum.reduceat(order, np.flatnonzero(new))
    return Groups(codes=codes, count=int(first.size), first=first)


def earlier_equal(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions, firsts): every position whose key occurred at an earlier position, in order,
    and the position of that key's first occurrence. Exact for any keys; fast for well-mixed keys
    (hashes): they are spread into buckets by their top bits, and only the few keys that share a
    bucket are sorted."""
    bits = max(10, int(np.ceil(np.log2(max(keys.size, 1)))) + 3)
    bucket = (keys.astype(np.uint64, copy=False) >> np.uint64(64 - bits)).astype(np.intp)
    crowded = np.flatnonzero(np.bincount(bucket, minlength=1 << bits)[bucket] > 1)
    groups = group(keys[crowded])
    firsts = crowded[groups.first[groups.codes]]
    later = firsts != crowded
    return crowded[later], firsts[later]


def first_occurrence_order(codes: np.ndarray, cardinality: int) -> np.ndarray:
    """For codes in [0, cardinality): new code per old code, numbered in order of first occurrence
    (-1 for codes that do not occur)."""
    first = np.full(cardinality, codes.size, dtype=np.int64)
    np.minimum.at(first, codes, np.arange(codes.size, dtype=np.int64))
    present = np.flatnonzero(first < codes.size)
    renumbered = np.full(cardinality, -1, dtype=np.int64)
    renumbered[present[np.argsort(first[present])]] = np.arange(present.size)
    return renumbered


def pair_keys(high: np.ndarray, low: np.ndarray, low_cardinality: int) -> np.ndarray:
    """One int64 key per pair (high, low), equal exactly when both are equal (``low`` in
    [0, low_cardinality), ``high`` >= 0)."""
    high_cardinality = int(high.max()) + 1 if high.size else 0
    if high_cardinality * max(low_cardinality, 1) >= 2**63:
        high = group(high).codes  # renumbered densely: fewer distinct values than elements
        high_cardinality = int(high.max()) + 1
    if high_cardinality * max(low_cardinality, 1) >= 2**63:
        raise OverflowError("pair keys exceed int64; process fewer rows at a time")
    return high.astype(np.int64) * np.int64(low_cardinality) + low


def stable_order(codes: np.ndarray, cardinality: int) -> np.ndarray:
    """``np.argsort(codes, kind="stable")`` for codes in [0, cardinality), as 16-bit radix passes."""
    if cardinality <= 1 << 16:
        return np.argsort(codes.astype(np.uint16, copy=False), kind="stable")
    by_low = np.argsort((codes & 0xFFFF).astype(np.uint16), kind="stable")
    if cardinality <= 1 << 32:
        return by_low[np.argsort((codes[by_low] >> 16).astype(np.uint16), kind="stable")]
    return np.argsort(codes, kind="stable")


__all__ = [
    "SEPARATOR",
    "Framed",
    "Groups",
    "Runs",
    "byte_buffers",
    "dictionary_codes",
    "earlier_equal",
    "first_occurrence_order",
    "group",
    "offsets_of",
    "pair_keys",
    "row_of",
    "stable_order",
    "string_array",
]
