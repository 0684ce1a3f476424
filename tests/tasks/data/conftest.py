"""A corpus of deliberately broken inputs, each planted with the one reason it must be quarantined for."""

from __future__ import annotations

import io
import random
import struct
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.data.validate import ValidationConfig

ACCEPTED = "accepted"


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = len(mode)
    return Image.fromarray(rng.integers(0, 256, (height, width, channels), dtype=np.uint8), mode=mode)


def png_declaring_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR (with a correct CRC) claims ``width x height``: a decompression bomb header."""
    data = bytearray(encode(Image.new("L", (1, 1))))
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


@dataclass
class BrokenCorpus:
    folder: Path
    """Image folder with captions.csv."""

    tar_path: Path
    parquet_path: Path
    outside_file: Path
    """A real file next to the folder that a '../' path points at; it must never be read."""

    expected_folder: dict[str, str] = field(default_factory=dict)
    """item id -> expected outcome (a quarantine reason or 'accepted')."""

    expected_tar: list[tuple[str, str]] = field(default_factory=list)
    """(member-derived item id, expected outcome) in tar order."""

    expected_parquet: dict[str, str] = field(default_factory=dict)

    config: ValidationConfig = field(
        default_factory=lambda: ValidationConfig(
            min_width_pixels=32, min_height_pixels=32, max_aspect_ratio=4.0, max_image_pixels=10_000_000
        )
    )


def _tar_add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


@pytest.fixture(scope="session")
def broken_corpus(tmp_path_factory: pytest.TempPathFactory) -> BrokenCorpus:
    root = tmp_path_factory.mktemp("broken")
    folder = root / "folder"
    (folder / "images").mkdir(parents=True)
    outside = root / "outside.png"
    outside.write_bytes(encode(noise_image(64, 64, seed=99)))

    good_jpeg = encode(noise_image(96, 80, seed=1), "JPEG", quality=90)
    good_png = encode(noise_image(64, 64, seed=2))
    big_jpeg = encode(noise_image(256, 256, seed=3), "JPEG", quality=95)
    sixteen_bit = encode(Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)))
    files = {
        "good-jpeg": ("good-jpeg.jpg", good_jpeg, "a noisy picture", ACCEPTED),
        "good-png": ("good-png.png", good_png, "another noisy picture", ACCEPTED),
        "cmyk-jpeg": ("cmyk.jpg", encode(noise_image(64, 64, seed=4, mode="CMYK"), "JPEG"), "cmyk", ACCEPTED),
        "png-16bit": ("gray16.png", sixteen_bit, "a 16-bit gradient", ACCEPTED),
        "gray-alpha": ("gray-alpha.png", encode(noise_image(48, 48, seed=5, mode="RGBA").convert("LA")), "la", ACCEPTED),
        "truncated-jpeg": ("truncated.jpg", big_jpeg[: len(big_jpeg) // 2], "half a file", "truncated_image"),
        "zero-bytes": ("zero.png", b"", "nothing", "zero_bytes"),
        "bomb-header": ("bomb.png", png_declaring_size(40_000, 40_000), "bomb", "decompression_bomb"),
        "bomb-soft": ("bomb-soft.png", png_declaring_size(4_000, 3_000), "a smaller bomb", "decompression_bomb"),
        "sliver-1x5000": ("sliver.png", encode(Image.new("RGB", (1, 5000), (1, 2, 3))), "a line", "bad_aspect_ratio"),
        "tiny": ("tiny.png", encode(Image.new("RGB", (16, 16))), "tiny", "too_small"),
        "lab-tiff": ("lab.tif", encode(Image.new("LAB", (64, 64), (50, 10, 10)), "TIFF"), "lab", "unsupported_colour_mode"),
        "garbage": ("garbage.jpg", random.Random(0).randbytes(2048), "random bytes", "corrupt_image"),
        "latin1-caption": ("latin1.png", good_png, "caf\udce9 cr\udce8me", "caption_not_utf8"),
        "empty-caption": ("empty-caption.png", good_png, "   ", "caption_empty"),
        "markup-only-caption": ("markup-only.png", good_png, "<p>&nbsp;</p><br/>", "caption_empty"),
        "markup-caption": ("markup.png", good_png, "<b>Red circle</b>&nbsp;for sale", ACCEPTED),
    }
    rows = [b"id,image,caption\n"]
    expected: dict[str, str] = {}
    for item_id, (name, payload, caption, outcome) in files.items():
        (folder / "images" / name).write_bytes(payload)
        # surrogateescape writes the planted raw bytes (0xe9, 0xe8) into the CSV as-is
        rows.append(f'{item_id},images/{name},"{caption}"\n'.encode("utf-8", errors="surrogateescape"))
        expected[item_id] = outcome
    for item_id, path, outcome in (
        ("escape-parent", "../outside.png", "unsafe_path"),
        ("escape-absolute", str(outside), "unsafe_path"),
        ("escape-nested", "images/../../outside.png", "unsafe_path"),
        ("missing-file", "images/not-there.png", "missing_image"),
    ):
        rows.append(f"{item_id},{path},caption\n".encode())
        expected[item_id] = outcome
    (folder / "captions.csv").write_bytes(b"".join(rows))

    tar_path = root / "shard-000000.tar"
    with tarfile.open(tar_path, "w") as tar:
        _tar_add(tar, "ok-1.png", good_png)
        _tar_add(tar, "ok-1.txt", b"a fine caption")
        _tar_add(tar, "../evil.png", good_png)
        _tar_add(tar, "/abs/evil2.png", good_png)
        link = tarfile.TarInfo("ok-2.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        _tar_add(tar, "sub/ok-3.jpg", good_jpeg)
        _tar_add(tar, "sub/ok-3.json", b'{"caption": "from json", "source_url": "http://x"}')
        _tar_add(tar, "bad-4.png", good_png)
        _tar_add(tar, "bad-4.txt", b"\xff\xfe not utf-8")
    expected_tar = [
        ("ok-1", ACCEPTED),
        ("evil.png", "unsafe_member"),
        ("evil2.png", "unsafe_member"),
        ("ok-2.png", "unsafe_member"),
        ("ok-3", ACCEPTED),
        ("bad-4", "caption_not_utf8"),
    ]

    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet_path = root / "pairs.parquet"
    table = pa.table(
        {
            "id": ["p-good", "p-null", "p-corrupt", "p-png"],
            "image": [good_jpeg, None, b"\x89PNG\r\n\x1a\nbroken", good_png],
            "caption": ["good", "null image", "corrupt", "also good"],
        }
    )
    pq.write_table(table, parquet_path)
    expected_parquet = {"p-good": ACCEPTED, "p-null": "missing_image", "p-corrupt": "corrupt_image", "p-png": ACCEPTED}
    return BrokenCorpus(folder, tar_path, parquet_path, outside, expected, expected_tar, expected_parquet)
