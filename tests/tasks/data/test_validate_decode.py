"""Issue 19, ingest per core: each image is decoded exactly once, always with truncated data refused, and
its bytes are hashed once; none of it changes what is accepted or what is stored.

The hostile inputs of issue 15 (tests/tasks/data/test_hostile_ingest.py) keep their reasons; these tests
add what the speed work relies on: the decode Pillow starts by itself to find a PNG's EXIF block, a
process where another library switched Pillow's truncation tolerance on, and the shared digest.
"""

from __future__ import annotations

import hashlib
import io
import threading

import pytest
from PIL import Image, ImageFile

import tasks.data.validate as validate
from tasks.data.sources import RawItem
from tasks.data.validate import QuarantineReason, Quarantined, ValidationConfig, validate_item
from tests.tasks.data.hostile_corpus import _chunk, camera_jpeg, encode, upright_picture


def _noise(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A picture that compresses badly, so that cutting its file short really truncates its pixels."""
    channels = len(mode)
    data = bytes((index * 7919 + seed * 104729 + (index * index) % 251) % 256 for index in range(size[0] * size[1] * channels))
    return Image.frombytes(mode, size, data)


def _png_with_exif(picture: Image.Image, orientation: int, after_pixels: bool) -> bytes:
    """A PNG whose ``eXIf`` chunk sits before its pixel data, or after it (where Pillow finds it only
    once it has decoded the pixels)."""
    png = encode(picture)
    exif = Image.Exif()
    exif[0x0112] = orientation
    block = _chunk(b"eXIf", exif.tobytes()[len(b"Exif\x00\x00"):])
    at = png.index(b"IEND" if after_pixels else b"IDAT") - 4
    return png[:at] + block + png[at:]


def _item(data: bytes, name: str = "x.png") -> RawItem:
    return RawItem(item_id="x", source_uri=f"test#{name}", image_bytes=data, image_name=name, caption="a picture")


@pytest.fixture()
def decoders(monkeypatch) -> list[str]:
    """Names of the Pillow decoders created while the test runs (one per decode of a one-tile image)."""
    created: list[str] = []
    original = Image._getdecoder

    def counting(mode, decoder_name, args, extra=()):
        created.append(decoder_name)
        return original(mode, decoder_name, args, extra)

    monkeypatch.setattr(Image, "_getdecoder", counting)
    return created


@pytest.fixture()
def truncation_tolerated():
    """The process as another library may leave it: Pillow told to accept truncated images."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    yield
    ImageFile.LOAD_TRUNCATED_IMAGES = previous


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_refused_even_where_pillow_was_told_to_accept_it(fmt, truncation_tolerated) -> None:
    whole = encode(_noise("RGB", (160, 120)), fmt)
    outcome = validate_item(_item(whole[: len(whole) // 2], f"x.{fmt.lower()}"), ValidationConfig())
    assert isinstance(outcome, Quarantined) and outcome.reason is QuarantineReason.TRUNCATED_IMAGE, outcome
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the other library's setting is given back


def test_truncation_guard_holds_on_concurrent_threads_and_restores_the_setting(truncation_tolerated) -> None:
    """Threads validating at once (a threaded Dask worker): each decode runs with truncation refused,
    and the value found before the first is restored after the last."""
    whole = encode(_noise("RGB", (160, 120)))
    truncated, good = whole[: len(whole) // 2], whole
    outcomes: list = []
    start = threading.Barrier(4)

    def work(data: bytes) -> None:
        start.wait()
        for _ in range(20):
            outcomes.append((data is good, validate_item(_item(data), ValidationConfig())))

    threads = [threading.Thread(target=work, args=(data,)) for data in (truncated, good, truncated, good)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outcomes) == 80
    for is_good, outcome in outcomes:
        if is_good:
            assert not isinstance(outcome, Quarantined), outcome
        else:
            assert isinstance(outcome, Quarantined) and outcome.reason is QuarantineReason.TRUNCATED_IMAGE
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


@pytest.mark.parametrize("after_pixels", [False, True], ids=["exif-before-pixels", "exif-after-pixels"])
def test_png_orientation_is_found_wherever_its_exif_sits_with_one_decode(after_pixels, decoders) -> None:
    # 96 wide x 72 high as stored; orientation 6 means it is seen 72 wide x 96 high (upright_picture)
    stored = upright_picture().transpose(Image.Transpose.ROTATE_90)
    outcome = validate_item(_item(_png_with_exif(stored, 6, after_pixels)), ValidationConfig(min_width_pixels=70, min_height_pixels=90))
    assert decoders.count("zip") == 1, decoders  # one PNG decode (zip: Pillow's PNG decoder)
    assert not isinstance(outcome, Quarantined), outcome
    assert (outcome.meta["width"], outcome.meta["height"]) == (72, 96)
    assert outcome.meta["source"]["exif_orientation"] == 6
    assert Image.open(io.BytesIO(outcome.image_bytes)).getpixel((5, 5)) == (220, 0, 0)  # upright: red top-left


def test_truncated_png_is_decoded_once_and_keeps_its_reason(decoders) -> None:
    whole = encode(_noise("RGB", (160, 120)))
    outcome = validate_item(_item(whole[: len(whole) // 2]), ValidationConfig())
    assert isinstance(outcome, Quarantined) and outcome.reason is QuarantineReason.TRUNCATED_IMAGE
    assert decoders.count("zip") == 1, decoders


def test_shape_checks_still_come_before_the_decode_of_a_truncated_png() -> None:
    """A PNG that is both too small and truncated is reported as too small (cheapest check first), even
    though its EXIF lookup decodes it first."""
    whole = encode(_noise("RGB", (40, 30)))
    outcome = validate_item(_item(whole[: len(whole) // 2]), ValidationConfig(min_width_pixels=64, min_height_pixels=64))
    assert isinstance(outcome, Quarantined) and outcome.reason is QuarantineReason.TOO_SMALL, outcome


def test_jpeg_with_orientation_in_its_header_is_rejected_for_shape_without_a_decode(decoders) -> None:
    outcome = validate_item(_item(camera_jpeg(6), "x.jpg"), ValidationConfig(min_width_pixels=80, min_height_pixels=80))
    assert isinstance(outcome, Quarantined) and outcome.reason is QuarantineReason.TOO_SMALL
    assert decoders == []


def test_digests_are_those_of_the_bytes_they_name() -> None:
    kept = encode(_noise("RGB", (64, 64)), "JPEG")
    converted = encode(_noise("RGBA", (64, 64)))
    for data, stored_as_is in ((kept, True), (converted, False)):
        item = _item(data)
        outcome = validate_item(item, ValidationConfig())
        assert not isinstance(outcome, Quarantined), outcome
        assert outcome.meta["source"]["original_sha256"] == hashlib.sha256(data).hexdigest() == item.image_sha256()
        assert outcome.meta["image_sha256"] == hashlib.sha256(outcome.image_bytes).hexdigest()
        assert (outcome.image_bytes == data) is stored_as_is


def test_item_digest_follows_replaced_bytes() -> None:
    item = _item(b"first bytes")
    assert item.image_sha256() == hashlib.sha256(b"first bytes").hexdigest()
    item.image_bytes = b"second bytes"
    assert item.image_sha256() == hashlib.sha256(b"second bytes").hexdigest()
    item.image_bytes = None
    assert item.image_sha256() is None


def test_guard_depth_returns_to_zero() -> None:
    """No decode leaves the counted guard held (which would pin Pillow's setting off for good)."""
    for data in (b"", b"not an image", encode(_noise("RGB", (64, 64)))[:200], encode(_noise("RGB", (64, 64)))):
        validate_item(_item(data), ValidationConfig())
    assert validate._truncation_guard_depth == 0


@pytest.mark.parametrize("mode, key, painted", [("L", 0, 200), ("RGB", (0, 0, 1), (200, 10, 10)), ("1", 0, 1)])
def test_colour_key_transparency_is_flattened_on_white_like_an_alpha_channel(mode, key, painted) -> None:
    """A PNG whose transparency is a colour key (tRNS), like the Tux Paint stamp
    seasonal/easter/chick-hatched.png: its transparent pixels are stored white, as an alpha channel's
    are, and the stored PNG keeps no key (it was stored on its key colour, black, before)."""
    picture = Image.new(mode, (64, 64), key)
    picture.paste(painted, (0, 0, 32, 64))
    outcome = validate_item(_item(encode(picture, transparency=key)), ValidationConfig())
    assert not isinstance(outcome, Quarantined), outcome
    stored = Image.open(io.BytesIO(outcome.image_bytes))
    assert stored.mode == "RGB" and "transparency" not in stored.info
    assert stored.getpixel((48, 10)) == (255, 255, 255)  # was transparent
    assert stored.getpixel((8, 10)) == picture.convert("RGB").getpixel((8, 10))  # painted pixels as they were
    assert outcome.meta["source"]["converted_to_rgb"] is True
