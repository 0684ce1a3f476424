"""Per-item validation: decide for each raw item whether it becomes a sample or goes to quarantine.

Every image is opened and checked cheapest-first, and the first failing check is the item's one
reason: reader problems (unsafe path, missing image, bad record) -> zero bytes -> header
(unknown format, decompression bomb by pixel count *before* decoding) -> aspect ratio ->
minimum resolution -> full decode (truncated, corrupt) -> colour mode (converted to RGB when the
conversion is well defined, quarantined otherwise) -> caption (UTF-8, non-empty).

Pillow's own guards are handled explicitly rather than trusted as globals: the decompression-bomb
warning is raised as an error for the duration of the check, our own pixel limit is applied from the
header, and ``LOAD_TRUNCATED_IMAGES`` is forced off while decoding so a truncated file can never be
half-decoded and accepted.
"""

from __future__ import annotations

import hashlib
import html
import io
import re
import warnings
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydantic import BaseModel, Field

from eve_model.shards import ShardSample
from tasks.data.sources import RawItem


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


class ValidationConfig(BaseModel):
    """Acceptance rules for images and captions."""

    min_width_pixels: int = Field(default=449, ge=1)
    """Smallest accepted width. The paper keeps images 'higher than 448x448'."""

    min_height_pixels: int = Field(default=449, ge=1)
    """Smallest accepted height."""

    max_aspect_ratio: float = Field(default=4.0, gt=1.0)
    """Largest accepted max(w/h, h/w); beyond it the image is a banner or a sliver."""

    max_image_pixels: int = Field(default=64_000_000, ge=1)
    """Width x height above which an image is treated as a decompression bomb (read from the header)."""

    require_caption: bool = True
    """Quarantine items without a caption (turn off for QA-only sources that carry conversations)."""

    @classmethod
    def paper(cls) -> "ValidationConfig":
        return cls()

    @classmethod
    def demo(cls) -> "ValidationConfig":
        """The demo's scenes are 96-192 px; keep everything but the deliberately broken items."""
        return cls(min_width_pixels=64, min_height_pixels=64, max_aspect_ratio=3.0, max_image_pixels=4_000_000)


# Modes whose conversion to 8-bit RGB is well defined. Pillow will "convert" LAB or HSV too, but
# channel-wise without colour management, which silently produces wrong colours: quarantine those.
CONVERTIBLE_MODES = ("RGB", "1", "L", "P", "RGBA", "LA", "PA", "RGBa", "La", "RGBX", "CMYK", "YCbCr",
                     "I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


@dataclass
class Quarantined:
    item_id: str
    source_uri: str
    reason: QuarantineReason
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"item_id": self.item_id, "source_uri": self.source_uri, "reason": self.reason.value, "detail": self.detail}


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


def _to_rgb(image) -> Any:
    """8-bit RGB from any mode Pillow can convert; raises ValueError when it cannot."""
    from PIL import Image

    mode = image.mode
    if mode not in CONVERTIBLE_MODES:
        raise ValueError(f"no well-defined conversion from {mode!r} (accepted: {', '.join(CONVERTIBLE_MODES)})")
    if mode == "RGB":
        return image
    if mode in _HIGH_BIT_DEPTH_MODES:
        import numpy as np

        values = np.asarray(image).astype(np.float64)
        top = values.max(initial=0.0)
        scale = 255.0 / 65535.0 if top > 255 and top <= 65535 else (255.0 / top if top > 65535 else 1.0)
        return Image.fromarray(np.clip(values * scale, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def check_image(data: bytes | None, config: ValidationConfig) -> CheckedImage:
    """Open, size-check, decode and normalise one image; raises ``_Reject`` with the reason."""
    from PIL import Image, ImageFile, UnidentifiedImageError

    if not data:
        raise _Reject(QuarantineReason.ZERO_BYTES, "image file is empty (0 bytes)")
    with warnings.catch_warnings():
        # Pillow only *warns* between MAX_IMAGE_PIXELS and twice that; a bomb must never be decoded.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _Reject(QuarantineReason.DECOMPRESSION_BOMB, f"Pillow refused the header: {exc}") from exc
        except UnidentifiedImageError as exc:
            raise _Reject(QuarantineReason.CORRUPT_IMAGE, f"not a recognisable image ({len(data)} bytes)") from exc
        except Exception as exc:  # any parser failure on hostile bytes is a corrupt file, not a crash
            raise _Reject(QuarantineReason.CORRUPT_IMAGE, f"header unreadable: {exc.__class__.__name__}: {exc}") from exc

    width, height = image.size
    if width * height > config.max_image_pixels:
        raise _Reject(
            QuarantineReason.DECOMPRESSION_BOMB,
            f"{width}x{height} = {width * height} pixels exceeds the limit of {config.max_image_pixels}",
        )
    if width < 1 or height < 1:
        raise _Reject(QuarantineReason.CORRUPT_IMAGE, f"header declares an empty {width}x{height} image")
    # Aspect before size: a 1x5000 sliver is better described by its shape than by its width.
    aspect = max(width / height, height / width)
    if aspect > config.max_aspect_ratio:
        raise _Reject(QuarantineReason.BAD_ASPECT_RATIO, f"{width}x{height} has aspect ratio {aspect:.1f} > {config.max_aspect_ratio}")
    if width < config.min_width_pixels or height < config.min_height_pixels:
        raise _Reject(
            QuarantineReason.TOO_SMALL,
            f"{width}x{height} is below the minimum {config.min_width_pixels}x{config.min_height_pixels}",
        )

    previous_truncated_policy = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        image.load()
    except Exception as exc:
        message = f"{exc.__class__.__name__}: {exc}"
        reason = QuarantineReason.TRUNCATED_IMAGE if "truncat" in message.lower() else QuarantineReason.CORRUPT_IMAGE
        raise _Reject(reason, f"decoding failed: {message}") from exc
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous_truncated_policy

    original_mode, original_format = image.mode, image.format
    try:
        rgb = _to_rgb(image)
    except (ValueError, OSError, TypeError) as exc:
        raise _Reject(QuarantineReason.UNSUPPORTED_COLOUR_MODE, f"mode {original_mode!r} cannot be converted to RGB: {exc}") from exc

    if rgb is image and original_format in _KEPT_FORMATS:
        return CheckedImage(data, _KEPT_FORMATS[original_format], width, height, original_format, original_mode, False)
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", compress_level=6)
    return CheckedImage(buffer.getvalue(), "png", width, height, original_format, original_mode, True)


def check_caption(caption: str | bytes | None, config: ValidationConfig) -> str | None:
    """The caption as clean text (stripped); raises ``_Reject`` for non-UTF-8 or empty captions."""
    if isinstance(caption, bytes):
        try:
            caption = caption.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Reject(
                QuarantineReason.CAPTION_NOT_UTF8,
                f"caption is not UTF-8 (byte 0x{caption[exc.start]:02x} at offset {exc.start})",
            ) from exc
    if caption is None:
        if config.require_caption:
            raise _Reject(QuarantineReason.CAPTION_EMPTY, "no caption")
        return None
    text = caption.strip()
    if not text:
        if config.require_caption:
            raise _Reject(QuarantineReason.CAPTION_EMPTY, f"caption is blank ({len(caption)} whitespace characters)")
        return None
    if not _visible_text(text):
        # markup is kept in otherwise real alt-text (re-captioning replaces it); markup alone says nothing
        raise _Reject(QuarantineReason.CAPTION_EMPTY, f"caption is only markup ({text[:80]!r})")
    return text


_TAG = re.compile(r"<[^>]*>")


def _visible_text(text: str) -> str:
    return html.unescape(_TAG.sub(" ", text)).replace("\xa0", " ").strip()


_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def sample_key(item: RawItem) -> str:
    """A shard key from the item id: only [A-Za-z0-9_-], bounded length."""
    key = _UNSAFE_KEY_CHARS.sub("_", item.item_id)[:120].strip("_") or "item"
    return key


def validate_item(item: RawItem, config: ValidationConfig) -> ShardSample | Quarantined:
    """One raw item -> a shard sample ready to write, or a quarantine record with one reason."""
    try:
        if item.reader_problem is not None:
            reason, detail = item.reader_problem
            raise _Reject(QuarantineReason(reason), detail)
        checked = check_image(item.image_bytes, config)
        caption = check_caption(item.caption, config)
    except _Reject as reject:
        return Quarantined(item.item_id, item.source_uri, reject.reason, reject.detail)

    extra = dict(item.extra)
    conversations = extra.pop("conversations", None)
    source = {
        "uri": item.relative_uri,
        "item_id": item.item_id,
        "original_sha256": hashlib.sha256(item.image_bytes).hexdigest(),
        "original_format": checked.original_format,
        "original_mode": checked.original_mode,
        "converted_to_rgb": checked.converted,
    }
    meta = {
        **extra,
        "caption": caption,
        "conversations": conversations,
        "image_sha256": hashlib.sha256(checked.image_bytes).hexdigest(),
        "width": checked.width,
        "height": checked.height,
        "source": source,
        "caption_provenance": {"kind": "source_alt_text"} if caption is not None else None,
    }
    return ShardSample(key=sample_key(item), meta=meta, image_bytes=checked.image_bytes, image_ext=checked.image_ext)
