"""Near-duplicate images by perceptual hash, the method and thresholds chosen by measurement.

An image is a near duplicate of an earlier one when its pixels are identical, or when both hold:
- the DCT perceptual hashes agree: the 64-bit ones differ in at most ``max_phash64_bits`` bits and
  the 256-bit ones (finer detail: a letter and its mirror image, two signs that differ in one arm)
  in at most ``max_phash256_bits``; or, when the coarse hashes nearly agree (at most
  ``close_phash64_bits``), the fine ones in at most ``close_phash256_bits`` (JPEG noise on flat
  drawings moves fine bits first);
- the 8x8 colour thumbnails have cosine >= ``min_colour_cosine`` (a perceptual hash sees only
  luminance: a red and a green traffic light differ in colour first).

Why this and not the teacher's embedding: on the 802 Tux Paint stamps plus 200 planted copies
(re-encoded, resized, brightened, cropped), teacher-embedding cosine >= 0.95 flagged 48 pairs of
different images (precision 0.79; q/p and d/b among them), and only cosine >= 0.995 reached
precision 1, at recall 0.28. This rule measured precision 0.976 at recall 0.80 (0.94-1.00 for
re-encoded, resized and brightened copies; a 2 % border crop is mostly missed, as by every hash
of this kind); its 4 wrong pairs are dreidels that differ only in a small letter.
``benchmarks/bench_curation.py`` prints the whole table; docs/data-quality.md explains the choice.

Candidates come from a multi-index hash over the 64-bit hashes (faiss ``IndexBinaryMultiHash``:
8 blocks of 8 bits, so any pair within 7 bits shares a block), so the search is not all-pairs.
Images are flattened onto white before hashing (stamps and icons are transparent PNGs).
"""

from __future__ import annotations

import hashlib

import numpy as np
from pydantic import BaseModel, Field

PHASH64_BYTES = 8
PHASH256_BYTES = 32


class ImageNearDuplicateRule(BaseModel):
    """Thresholds of the perceptual-hash near-duplicate rule (defaults measured, see the module docstring)."""

    max_phash64_bits: int = Field(default=6, ge=0, le=7)
    """Most differing bits of the 64-bit pHash (the candidate search finds pairs within 7)."""

    max_phash256_bits: int = Field(default=24, ge=0, le=256)
    """Most differing bits of the 256-bit pHash."""

    close_phash64_bits: int = Field(default=2, ge=0, le=7)
    """A pair whose 64-bit pHashes differ in at most this many bits ..."""

    close_phash256_bits: int = Field(default=32, ge=0, le=256)
    """... may differ in this many bits of the 256-bit pHash."""

    min_colour_cosine: float = Field(default=0.95, ge=-1.0, le=1.0)
    """Least cosine similarity of the mean-centred 8x8 RGB thumbnails."""

    def describe(self) -> str:
        return (f"perceptual hash: identical pixels, or (pHash-64 <= {self.max_phash64_bits} bits and pHash-256 <= "
                f"{self.max_phash256_bits} bits, or pHash-64 <= {self.close_phash64_bits} and pHash-256 <= "
                f"{self.close_phash256_bits}) and colour cosine >= {self.min_colour_cosine}")

    def matches(self, phash64_bits: int, phash256_bits: int, colour_cosine: float) -> bool:
        """The rule on one pair's distances."""
        hashes_agree = (phash64_bits <= self.max_phash64_bits and phash256_bits <= self.max_phash256_bits) or (
            phash64_bits <= self.close_phash64_bits and phash256_bits <= self.close_phash256_bits)
        return hashes_agree and colour_cosine >= self.min_colour_cosine


def flatten_on_white(image):
    """RGB image with any transparency composited onto white."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def colour_thumbnail(image) -> np.ndarray:
    """8x8 RGB thumbnail of the flattened image, mean-centred and L2-normalised: (192,) float32."""
    thumb = np.asarray(flatten_on_white(image).resize((8, 8)), dtype=np.float32).reshape(-1) / 255.0
    thumb -= thumb.mean()
    return thumb / (np.linalg.norm(thumb) + 1e-8)


class ImageFingerprints:
    """Per-image hashes, filled image by image: pixel sha256, pHash-64, pHash-256, colour thumbnail."""

    def __init__(self) -> None:
        self.pixel_sha256: list[str] = []
        self._phash64: list[np.ndarray] = []
        self._phash256: list[np.ndarray] = []
        self._colour: list[np.ndarray] = []

    def add(self, image) -> None:
        import imagehash

        flat = flatten_on_white(image)
        self.pixel_sha256.append(hashlib.sha256(flat.tobytes() + repr(flat.size).encode()).hexdigest())
        self._phash64.append(np.packbits(imagehash.phash(flat, hash_size=8).hash.reshape(-1)))
        self._phash256.append(np.packbits(imagehash.phash(flat, hash_size=16).hash.reshape(-1)))
        self._colour.append(colour_thumbnail(flat))

    def __len__(self) -> int:
        return len(self.pixel_sha256)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pHash-64 (N, 8) uint8, pHash-256 (N, 32) uint8, colour (N, 192) float32)."""
        count = len(self)
        return (
            np.asarray(self._phash64, dtype=np.uint8).reshape(count, PHASH64_BYTES),
            np.asarray(self._phash256, dtype=np.uint8).reshape(count, PHASH256_BYTES),
            np.asarray(self._colour, dtype=np.float32).reshape(count, 192),
        )


def hamming_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Differing bits between packed hashes, row-wise: (N, B) x (N, B) uint8 -> (N,) int."""
    return np.unpackbits(np.bitwise_xor(a, b), axis=-1).sum(axis=-1)


def find_near_duplicate_images(
    fingerprints: ImageFingerprints, rule: ImageNearDuplicateRule
) -> dict[int, tuple[int, str]]:
    """Greedy in input order: index -> (index of the earlier kept image it duplicates, why).

    Of a group of near duplicates the first stays; an image is compared only with kept images.
    """
    import faiss

    count = len(fingerprints)
    duplicates: dict[int, tuple[int, str]] = {}
    if count < 2:
        return duplicates
    phash64, phash256, colour = fingerprints.arrays()
    first_with_pixels: dict[str, int] = {}
    index = faiss.IndexBinaryMultiHash(64, 8, 8)
    index.add(phash64)
    # range_search keeps distances < radius; 8 blocks guarantee every pair within 7 bits is found.
    radius = max(rule.max_phash64_bits, rule.close_phash64_bits) + 1
    limits, distances, neighbours = index.range_search(phash64, radius)
    for row in range(count):
        pixels = fingerprints.pixel_sha256[row]
        if pixels in first_with_pixels:
            first = first_with_pixels[pixels]
            duplicates[row] = (duplicates[first][0] if first in duplicates else first, "identical pixels")
            continue
        first_with_pixels[pixels] = row
        start, end = limits[row], limits[row + 1]
        earlier = [(int(n), int(d)) for n, d in zip(neighbours[start:end], distances[start:end])
                   if n < row and int(n) not in duplicates]
        for candidate, bits64 in sorted(earlier):
            bits256 = int(hamming_bits(phash256[row], phash256[candidate]))
            cosine = float(colour[row] @ colour[candidate])
            if rule.matches(bits64, bits256, cosine):
                duplicates[row] = (candidate, f"pHash-64 {bits64} bits, pHash-256 {bits256} bits, colour cosine {cosine:.3f}")
                break
    return duplicates


__all__ = [
    "ImageFingerprints",
    "ImageNearDuplicateRule",
    "colour_thumbnail",
    "find_near_duplicate_images",
    "flatten_on_white",
    "hamming_bits",
]
