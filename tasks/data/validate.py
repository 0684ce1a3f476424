"""Per-item validation: decide for each raw item whether it becomes a sample or goes to quarantine.

Every image is opened and checked cheapest-first, and the first failing check is the item's one
reason: reader problems (unsafe path, symlink out of the folder, not a regular file, over the size
cap, missing image, bad record) -> fields (every field UTF-8 and JSON-safe, the bad one named) ->
zero bytes -> header (unknown format, decompression bomb by pixel count *before* decoding) ->
aspect ratio -> minimum resolution (both on the size as the image is meant to be seen, after its
EXIF orientation) -> full decode (truncated, corrupt) -> colour mode and bit depth (converted to
8-bit RGB when the conversion is well defined, quarantined otherwise) -> caption (text, UTF-8,
non-empty).

Transparency, whether an alpha channel or a colour key (PNG ``tRNS``), is flattened onto white.
What a conversion did is recorded in the sample's ``source`` metadata, never silently: the EXIF
orientation applied (``exif_orientation``; the pixels are stored upright once and the tag is
dropped, so nothing downstream rotates them again), the frame kept of an animated image
(``num_frames``, ``frame_used``), the bit depth a high-bit-depth image was scaled from
(``scaled_from_bits``).

Pillow's own guards are handled explicitly rather than trusted as globals: our own pixel limit is
applied from the header before anything is decoded (Pillow's global guard is set aside for the
header read only, so that the configured limit is the one that counts and the reason names the
declared size), and ``LOAD_TRUNCATED_IMAGES`` is forced off for every decode, including the one
Pillow starts by itself to find a PNG's EXIF block, so a truncated file can never be half-decoded
and accepted, whatever another library in the process set.

Cost: each image is decoded exactly once, and its bytes are hashed once (``RawItem.image_sha256``,
shared with the ingest's source hash). An image stored as it came (8-bit RGB JPEG, PNG or WebP with
nothing to apply) costs its decode plus a few header reads; one that must be converted also costs
the conversion and a PNG encode, which is several times its decode
(``benchmarks/bench_data.py`` measures both against a bare decode loop).
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import math
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pydantic import BaseModel, Field

from eve_model.shards import MAX_KEY_CHARS, ShardSample
from tasks.data.sources import RawItem, type_phrase


class QuarantineReason(str, Enum):
    """Why an item was quarantined; one per item."""

    BAD_RECORD = "bad_record"
    UNSAFE_PATH = "unsafe_path"
    UNSAFE_MEMBER = "unsafe_member"
    UNREADABLE_SOURCE = "unreadable_source"
    MISSING_IMAGE = "missing_image"
    ZERO_BYTES = "zero_bytes"
    CORRUPT_IMAGE = "corrupt_image"
    TRUNCATED_IMAGE = "truncated_image"
    DECOMPRESSION_BOMB = "decompression_bomb"
    TOO_SMALL = "too_small"
    BAD_ASPECT_RATIO = "bad_aspect_ratio"
    UNSUPPORTED_COLOUR_MODE = "unsupported_colour_mode"
    CAPTION_NOT_UTF8 = "caption_not_utf8"
    CAPTION_EMPTY = "caption_empty"
    CAPTION_NOT_TEXT = "caption_not_text"
    NOT_REGULAR_FILE = "not_regular_file"
    FILE_TOO_LARGE = "file_too_large"
    FIELD_NOT_UTF8 = "field_not_utf8"
    FIELD_NOT_JSON = "field_not_json"
    UNUSABLE_BIT_DEPTH = "unusable_bit_depth"


class ValidationConfig(BaseModel):
    """Acceptance rules for images and captions. The defaults are production defaults for a team's
    own data (ordinary photos, drawings, screenshots): they quarantine what cannot be a training
    image, not what is merely small; which images are good enough to train on is curation's call
    (``CurationConfig``). ``paper()`` is EVE's pre-training rule, ``demo()`` the embedded demo's."""

    min_width_pixels: int = Field(default=14, ge=1)
    """Smallest accepted width. 14 px is one patch of EVE's patch embedding: a narrower image does
    not fill a single patch. (Curation's resolution floor, 32 px by default, decides what is worth
    training on; the paper keeps images 'higher than 448x448': ``paper()``.)"""

    min_height_pixels: int = Field(default=14, ge=1)
    """Smallest accepted height (see ``min_width_pixels``)."""

    max_aspect_ratio: float = Field(default=10.0, gt=1.0)
    """Largest accepted max(w/h, h/w). Beyond 10:1 an image is a banner, a separator or a sliver; real
    objects stay below it (the 802 Tux Paint stamps reach 7.1:1, a bassoon; 5 of them exceed 4:1)."""

    max_image_pixels: int = Field(default=200_000_000, ge=1)
    """Width x height above which an image is a decompression bomb (read from the header, before a pixel
    is decoded). 200 megapixels is far above ordinary photos (16x a 12-megapixel one, 4x a 48-megapixel
    phone photo) and far below what bombs declare (a 40,000 x 40,000 PNG of a few hundred bytes is
    1,600 megapixels). Decoding an image at the limit takes ~600 MB as 8-bit RGB."""

    require_caption: bool = True
    """Quarantine items without a caption (turn off for QA-only sources that carry conversations)."""

    @classmethod
    def paper(cls) -> "ValidationConfig":
        """EVE's pre-training rule: images larger than 448 x 448, at most 4:1."""
        return cls(min_width_pixels=449, min_height_pixels=449, max_aspect_ratio=4.0)

    @classmethod
    def demo(cls) -> "ValidationConfig":
        """The demo's scenes are 96-192 px; keep everything but the deliberately broken items. The
        decompression-bomb limit stays the default: a real photo added to the demo source is no bomb."""
        return cls(min_width_pixels=64, min_height_pixels=64, max_aspect_ratio=3.0)

    def rules_in_force(self) -> list[str]:
        """The rules as sentences, for every summary of an ingest (CLI, Prefect artifact)."""
        return [
            f"image at least {self.min_width_pixels} x {self.min_height_pixels} px (after EXIF orientation)",
            f"aspect ratio at most {self.max_aspect_ratio:g}:1",
            f"at most {self.max_image_pixels:,} pixels declared in the header (decompression bomb above)",
            "caption required" if self.require_caption else "no caption required (conversations)",
        ]


# Modes whose conversion to 8-bit RGB is well defined. Pillow will "convert" LAB or HSV too, but
# channel-wise without colour management, which silently produces wrong colours; and a 32-bit
# integer ("I") or float ("F") image has no value range the file defines: quarantine those.
CONVERTIBLE_MODES = ("RGB", "1", "L", "P", "RGBA", "LA", "PA", "RGBa", "La", "RGBX", "CMYK", "YCbCr",
                     "I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_COLOUR_KEY_MODES = ("1", "L", "P", "RGB")  # modes where a PNG/GIF colour key (``transparency``) is kept by Pillow
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
SIXTEEN_BIT_MIN_PEAK_WITHOUT_SBIT = 2**14
"""A 16-bit image that declares no significant bits (PNG ``sBIT``) must reach this value somewhere.
One whose values all stay below 2^14 (a 10-, 12- or 14-bit sensor's data stored in a 16-bit file)
would come out at a quarter of its brightness or less, near black, if scaled by its declared 16
bits, and its real depth cannot be told from the file: it is quarantined, not guessed."""
MAX_FIELD_DEPTH = 64
"""Deepest nesting of lists and objects accepted in a record's fields."""
_EXIF_ORIENTATION_TAG = 0x0112
_ORIENTATIONS_SWAPPING_SIDES = (5, 6, 7, 8)


def printable(text: str) -> str:
    """``text`` as valid UTF-8: bytes that were not UTF-8 (surrogate-escaped) shown as ``\\udcXX``."""
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


@dataclass
class Quarantined:
    item_id: str
    source_uri: str
    reason: QuarantineReason
    detail: str

    def to_json(self) -> dict[str, str]:
        """The quarantine record; always valid UTF-8, whatever bytes the item's id or URI held."""
        return {"item_id": printable(self.item_id), "source_uri": printable(self.source_uri),
                "reason": self.reason.value, "detail": printable(self.detail)}


class _Reject(Exception):
    def __init__(self, reason: QuarantineReason, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@dataclass
class CheckedImage:
    """An image that passed: the bytes to store (original, or re-encoded PNG after conversion)."""

    image_bytes: bytes
    image_ext: str
    width: int
    height: int
    original_format: str | None
    original_mode: str
    converted: bool
    notes: dict[str, Any] = field(default_factory=dict)
    """What a conversion did besides the colour mode (orientation, frame, bit depth), for the sample's metadata."""


@dataclass(frozen=True)
class PngDepth:
    """What a PNG header says about its samples (Pillow does not read ``sBIT``)."""

    bit_depth: int
    colour_type: int
    significant_bits: tuple[int, ...] | None
    """The ``sBIT`` chunk: significant bits per channel, None when the file has none."""


def png_depth(data: bytes) -> PngDepth | None:
    """Bit depth, colour type and ``sBIT`` of a PNG, read from its chunks before ``IDAT``; None if not a PNG."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or len(data) < 33:
        return None
    bit_depth, colour_type = data[24], data[25]
    significant = None
    offset = 8
    while offset + 8 <= len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8]
        if kind in (b"IDAT", b"IEND"):
            break
        if kind == b"sBIT":
            significant = tuple(data[offset + 8 : offset + 8 + min(length, 4)])
        offset += 12 + length
    return PngDepth(bit_depth, colour_type, significant or None)


def _scale_sixteen_bit(image, depth: PngDepth | None, notes: dict[str, Any]):
    """8-bit greyscale from a 16-bit greyscale image, scaled by its real bit depth (see the constant)."""
    import numpy as np
    from PIL import Image

    values = np.asarray(image).astype(np.float64)
    peak = int(values.max(initial=0.0))
    significant = depth.significant_bits[0] if depth and depth.significant_bits else None
    if significant is not None and significant < 16 and peak < 2**significant:
        # The values were stored as they came (not shifted up as the PNG spec asks): scale by sBIT.
        bits = significant
    elif significant is None and peak < SIXTEEN_BIT_MIN_PEAK_WITHOUT_SBIT:
        raise _Reject(
            QuarantineReason.UNUSABLE_BIT_DEPTH,
            f"16-bit image whose brightest value is {peak} (it uses at most {max(peak, 1).bit_length()} of its 16 bits) "
            "and that declares no significant bits (PNG sBIT): its real bit depth is unknown; scaled by 16 bits it "
            "would be near black",
        )
    else:
        bits = 16
    notes["scaled_from_bits"] = bits
    return Image.fromarray(np.clip(values * (255.0 / (2**bits - 1)), 0, 255).astype(np.uint8), mode="L")


def _check_sixteen_bit_colour(image, depth: PngDepth | None) -> None:
    """Pillow decodes a 16-bit colour PNG to its high bytes; refuse one whose data sits in the low bits."""
    if depth is None or depth.bit_depth != 16 or depth.colour_type not in (2, 4, 6):
        return
    channels = image.getextrema()
    colour_channels = channels[:1] if depth.colour_type == 4 else channels[:3]  # alpha says nothing of depth
    peak_high_byte = max(high for _, high in colour_channels) if isinstance(channels[0], tuple) else channels[1]
    significant = min(depth.significant_bits) if depth.significant_bits else None
    if significant is not None and significant < 16 and peak_high_byte < 2 ** max(significant - 8, 0):
        raise _Reject(
            QuarantineReason.UNUSABLE_BIT_DEPTH,
            f"16-bit colour PNG with {significant} significant bits (sBIT) stored unshifted: 8-bit decoding keeps only "
            f"the top byte, i.e. {max(significant - 8, 0)} of its {significant} bits",
        )
    if significant is None and peak_high_byte < SIXTEEN_BIT_MIN_PEAK_WITHOUT_SBIT >> 8:
        raise _Reject(
            QuarantineReason.UNUSABLE_BIT_DEPTH,
            "16-bit colour PNG whose values stay below 2^14 and that declares no significant bits (sBIT): its real "
            "bit depth is unknown; decoded by its declared 16 bits it would be near black",
        )


def _to_rgb(image, depth: PngDepth | None = None, notes: dict[str, Any] | None = None) -> Any:
    """8-bit RGB from any mode whose conversion is well defined; raises ValueError when there is none
    and ``_Reject`` when the bit depth makes it unusable."""
    from PIL import Image

    notes = {} if notes is None else notes
    mode = image.mode
    if mode not in CONVERTIBLE_MODES:
        raise ValueError(f"no well-defined conversion from {mode!r} (accepted: {', '.join(CONVERTIBLE_MODES)})")
    if mode in _SIXTEEN_BIT_MODES:
        return _scale_sixteen_bit(image, depth, notes).convert("RGB")
    _check_sixteen_bit_colour(image, depth)
    if "transparency" in image.info and mode in _COLOUR_KEY_MODES:
        # A colour key (PNG tRNS) makes pixels transparent as an alpha channel does: flattened on white
        # like them. (Before, greyscale and RGB images kept the key and their transparent pixels as
        # stored, whatever colour those hide; only palette images were flattened.)
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode == "RGB":
        return image
    if mode in _ALPHA_MODES:
        rgba = image if mode == "RGBA" else image.convert("RGBA")  # alpha_composite reads it, never writes it
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _exif_orientation(image) -> int | None:
    """The EXIF orientation tag (1-8) read from the header, None if absent or unreadable."""
    try:
        value = image.getexif().get(_EXIF_ORIENTATION_TAG)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not a broken image
        return None
    return value if isinstance(value, int) and 1 <= value <= 8 else None


_PILLOW_LIMIT_LOCK = threading.Lock()


def _open_header(data: bytes):
    """``Image.open`` (the header only: nothing is decoded) with Pillow's global pixel guard set aside.

    The limit that counts is ``ValidationConfig.max_image_pixels``, checked right after with a reason
    that names the declared size; Pillow's own guard (a warning above ~89 megapixels) would refuse
    ordinary large photos below it, with a message that names neither side. Nothing is decoded while
    the guard is off, and the lock keeps the window to this call."""
    from PIL import Image

    with _PILLOW_LIMIT_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = previous


_TRUNCATION_GUARD_LOCK = threading.Lock()
_truncation_guard_depth = 0
_truncation_policy_outside = False


@contextmanager
def _truncated_images_refused() -> Iterator[None]:
    """Pillow's ``LOAD_TRUNCATED_IMAGES`` off while the block decodes, then back to what it was.

    Counted, so that decodes on several threads at once (a threaded Dask worker) all run with it off
    and the value found before the first of them is restored after the last one; the lock guards the
    count only, never a decode."""
    from PIL import ImageFile

    global _truncation_guard_depth, _truncation_policy_outside
    with _TRUNCATION_GUARD_LOCK:
        if _truncation_guard_depth == 0:
            _truncation_policy_outside = ImageFile.LOAD_TRUNCATED_IMAGES
        _truncation_guard_depth += 1
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        with _TRUNCATION_GUARD_LOCK:
            _truncation_guard_depth -= 1
            if _truncation_guard_depth == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _truncation_policy_outside


def _decode(image) -> Exception | None:
    """Decode every pixel of ``image`` (truncated data refused); the error, or None when it decoded."""
    try:
        with _truncated_images_refused():
            image.load()
    except Exception as exc:  # noqa: BLE001 - any decoder failure on hostile bytes is the item's reason
        return exc
    return None


def _decode_reject(error: Exception) -> _Reject:
    message = f"{error.__class__.__name__}: {error}"
    reason = QuarantineReason.TRUNCATED_IMAGE if "truncat" in message.lower() else QuarantineReason.CORRUPT_IMAGE
    return _Reject(reason, f"decoding failed: {message}")


def _exif_needs_decode(image) -> bool:
    """Whether Pillow must decode ``image`` to read its EXIF block: a PNG may carry ``eXIf`` (or an
    EXIF text chunk) after its pixel data, and Pillow reads those chunks only after decoding."""
    from PIL import PngImagePlugin

    return isinstance(image, PngImagePlugin.PngImageFile) and "exif" not in image.info


def check_image(data: bytes | None, config: ValidationConfig) -> CheckedImage:
    """Open, size-check, decode and normalise one image; raises ``_Reject`` with the reason."""
    from PIL import ImageOps, UnidentifiedImageError

    if not data:
        raise _Reject(QuarantineReason.ZERO_BYTES, "image file is empty (0 bytes)")
    try:
        image = _open_header(data)
    except UnidentifiedImageError as exc:
        raise _Reject(QuarantineReason.CORRUPT_IMAGE, f"not a recognisable image ({len(data)} bytes)") from exc
    except Exception as exc:  # any parser failure on hostile bytes is a corrupt file, not a crash
        raise _Reject(QuarantineReason.CORRUPT_IMAGE, f"header unreadable: {exc.__class__.__name__}: {exc}") from exc

    width, height = image.size
    if width * height > config.max_image_pixels:
        raise _Reject(
            QuarantineReason.DECOMPRESSION_BOMB,
            f"header declares {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{config.max_image_pixels:,} (far above any ordinary photo); not decoded",
        )
    if width < 1 or height < 1:
        raise _Reject(QuarantineReason.CORRUPT_IMAGE, f"header declares an empty {width}x{height} image")
    # The one decode. A PNG's orientation may sit after its pixels, where Pillow looks only once it has
    # decoded them: that PNG is decoded here (truncation refused), and a failure is reported after the
    # shape checks, as for every other image, so the first failing check stays the item's reason.
    decode_error = _decode(image) if _exif_needs_decode(image) else None
    with _truncated_images_refused():  # should another format's EXIF reader decode too
        orientation = _exif_orientation(image) if decode_error is None else None
    if orientation in _ORIENTATIONS_SWAPPING_SIDES:
        width, height = height, width  # the size as the picture is meant to be seen
    # Aspect before size: a 1x5000 sliver is better described by its shape than by its width.
    aspect = max(width / height, height / width)
    if aspect > config.max_aspect_ratio:
        raise _Reject(QuarantineReason.BAD_ASPECT_RATIO, f"{width}x{height} has aspect ratio {aspect:.1f} > {config.max_aspect_ratio}")
    if width < config.min_width_pixels or height < config.min_height_pixels:
        raise _Reject(
            QuarantineReason.TOO_SMALL,
            f"{width}x{height} is below the minimum {config.min_width_pixels}x{config.min_height_pixels}",
        )
    if decode_error is None:
        decode_error = _decode(image)  # a no-op for the PNG decoded above
    if decode_error is not None:
        raise _decode_reject(decode_error) from decode_error

    original_mode, original_format = image.mode, image.format
    notes: dict[str, Any] = {}
    num_frames = int(getattr(image, "n_frames", 1) or 1)
    if num_frames > 1:
        notes.update(num_frames=num_frames, frame_used=0)  # the first frame, as every image reader shows it
    pixels = image
    if orientation not in (None, 1):
        pixels = ImageOps.exif_transpose(image)  # applied once here; the stored PNG carries no orientation
        notes["exif_orientation"] = orientation
    try:
        rgb = _to_rgb(pixels, png_depth(data) if original_format == "PNG" else None, notes)
    except (ValueError, OSError, TypeError) as exc:
        raise _Reject(QuarantineReason.UNSUPPORTED_COLOUR_MODE, f"mode {original_mode!r} cannot be converted to RGB: {exc}") from exc

    if rgb is image and original_format in _KEPT_FORMATS and not notes:
        return CheckedImage(data, _KEPT_FORMATS[original_format], width, height, original_format, original_mode, False)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", compress_level=6)
    return CheckedImage(buffer.getvalue(), "png", rgb.width, rgb.height, original_format, original_mode, True, notes)


def check_caption(caption: Any, config: ValidationConfig) -> str | None:
    """The caption as clean text (stripped); raises ``_Reject`` for a caption that is not text, not
    UTF-8, or empty."""
    if isinstance(caption, (bytes, bytearray)):
        try:
            caption = bytes(caption).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Reject(
                QuarantineReason.CAPTION_NOT_UTF8,
                f"caption is not UTF-8 (byte 0x{caption[exc.start]:02x} at offset {exc.start})",
            ) from exc
    if caption is None:
        if config.require_caption:
            raise _Reject(QuarantineReason.CAPTION_EMPTY, "no caption")
        return None
    if not isinstance(caption, str):
        # never str()-ed into "['a', 'b']" or "42": a caption that is not text is a supplier's mistake
        raise _Reject(QuarantineReason.CAPTION_NOT_TEXT, f"caption is {type_phrase(caption)} ({_preview(caption)}), not text")
    problem = _utf8_problem(caption)
    if problem:
        raise _Reject(QuarantineReason.CAPTION_NOT_UTF8, f"caption {problem}")
    text = caption.strip()
    if not text:
        if config.require_caption:
            raise _Reject(QuarantineReason.CAPTION_EMPTY, f"caption is blank ({len(caption)} whitespace characters)")
        return None
    if not _visible_text(text):
        # markup is kept in otherwise real alt-text (re-captioning replaces it); markup alone says nothing
        raise _Reject(QuarantineReason.CAPTION_EMPTY, f"caption is only markup ({text[:80]!r})")
    return text


def _preview(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=True, default=repr)
    except (ValueError, RecursionError):
        text = repr(type(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _utf8_problem(text: str) -> str | None:
    """Why ``text`` cannot be written as UTF-8 (a byte that was not UTF-8, a lone surrogate), or None."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as exc:
        character = ord(text[exc.start])
        if 0xDC80 <= character <= 0xDCFF:  # surrogate-escaped: the reader saw a raw byte
            return f"is not UTF-8 (byte 0x{character - 0xDC00:02x} at character {exc.start})"
        return f"holds a lone surrogate U+{character:04X} at character {exc.start}"


def _field_problem(name: str, value: Any) -> tuple[QuarantineReason, str] | None:
    """The first part of a field that cannot be stored as JSON text, with its path; None if all can."""
    stack: list[tuple[str, Any, int]] = [(name, value, 0)]
    while stack:
        path, current, depth = stack.pop()
        if depth > MAX_FIELD_DEPTH:
            return QuarantineReason.FIELD_NOT_JSON, f"field {printable(name)!r} is nested deeper than {MAX_FIELD_DEPTH} levels"
        if isinstance(current, str):
            problem = _utf8_problem(current)
            if problem:
                return QuarantineReason.FIELD_NOT_UTF8, f"field {printable(path)!r} {problem}"
        elif isinstance(current, float) and not math.isfinite(current):
            return QuarantineReason.FIELD_NOT_JSON, f"field {printable(path)!r} is {current}, which JSON cannot hold"
        elif isinstance(current, dict):
            for key, item in current.items():
                key_text = str(key)
                key_problem = _utf8_problem(key_text)
                if key_problem:
                    return QuarantineReason.FIELD_NOT_UTF8, f"a key in field {printable(path)!r} {key_problem}"
                stack.append((f"{path}.{key_text}", item, depth + 1))
        elif isinstance(current, (list, tuple)):
            stack.extend((f"{path}[{index}]", item, depth + 1) for index, item in enumerate(current))
        elif current is not None and not isinstance(current, (bool, int, float)):
            return QuarantineReason.FIELD_NOT_JSON, f"field {printable(path)!r} is {type_phrase(current)}, not JSON"
    return None


def check_fields(item: RawItem) -> None:
    """Every field that goes into the sample's metadata is UTF-8 text and JSON-safe; raises ``_Reject``
    naming the first one that is not (an id, a URI, ``true_caption``, a nested conversation turn)."""
    for name, value in (("id", item.item_id), ("source_uri", item.source_uri), *item.extra.items()):
        problem = _field_problem(str(name), value)
        if problem:
            raise _Reject(*problem)


_TAG = re.compile(r"<[^>]*>")


def _visible_text(text: str) -> str:
    return html.unescape(_TAG.sub(" ", text)).replace("\xa0", " ").strip()


_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")
# Keys are cut at the shard format's MAX_KEY_CHARS (95). They were cut at 120 before, and an item id of 96
# or more characters stopped the whole ingest when its shard was written; shorter keys are unchanged.


def sample_key(item: RawItem) -> str:
    """A shard key from the item id: only [A-Za-z0-9_-], at most ``MAX_KEY_CHARS``."""
    key = _UNSAFE_KEY_CHARS.sub("_", item.item_id)[:MAX_KEY_CHARS].strip("_") or "item"
    return key


def validate_item(item: RawItem, config: ValidationConfig) -> ShardSample | Quarantined:
    """One raw item -> a shard sample ready to write, or a quarantine record with one reason."""
    try:
        if item.reader_problem is not None:
            reason, detail = item.reader_problem
            raise _Reject(QuarantineReason(reason), detail)
        check_fields(item)
        checked = check_image(item.image_bytes, config)
        caption = check_caption(item.caption, config)
    except _Reject as reject:
        return Quarantined(item.item_id, item.source_uri, reject.reason, reject.detail)

    extra = dict(item.extra)
    conversations = extra.pop("conversations", None)
    original_sha256 = item.image_sha256()  # hashed once per item (the ingest's source hash shares it)
    stored_sha256 = original_sha256 if checked.image_bytes is item.image_bytes else hashlib.sha256(checked.image_bytes).hexdigest()
    source = {
        "uri": item.relative_uri,
        "item_id": item.item_id,
        "original_sha256": original_sha256,
        "original_format": checked.original_format,
        "original_mode": checked.original_mode,
        "converted_to_rgb": checked.converted,
        **checked.notes,
    }
    meta = {
        **extra,
        "caption": caption,
        "conversations": conversations,
        "image_sha256": stored_sha256,
        "width": checked.width,
        "height": checked.height,
        "source": source,
        "caption_provenance": {"kind": "source_alt_text"} if caption is not None else None,
    }
    return ShardSample(key=sample_key(item), meta=meta, image_bytes=checked.image_bytes, image_ext=checked.image_ext)
