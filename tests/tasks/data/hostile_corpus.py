"""Builders of hostile and careless inputs for the ingest tests (issue 15): each writes its files
under a temporary folder and says what the ingest must make of every item.

Nothing here is a fixture: every test builds only the corpus it needs, in its own tmp_path.
"""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ACCEPTED = "accepted"


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def plain_png(width: int = 64, height: int = 64, colour=(200, 40, 40)) -> bytes:
    return encode(Image.new("RGB", (width, height), colour))


def tar_add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def raw_png(samples: np.ndarray, colour_type: int, significant_bits: bytes | None = None) -> bytes:
    """A PNG written byte by byte (Pillow cannot write 16-bit colour or ``sBIT``): ``samples`` is
    (H, W) for grey (colour type 0) or (H, W, 3) for RGB (colour type 2), dtype uint16, big-endian."""
    height, width = samples.shape[:2]
    rows = samples.astype(">u2").reshape(height, -1).tobytes()
    stride = len(rows) // height
    filtered = b"".join(b"\x00" + rows[i * stride : (i + 1) * stride] for i in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    chunks = _chunk(b"IHDR", header)
    if significant_bits is not None:
        chunks += _chunk(b"sBIT", significant_bits)
    return b"\x89PNG\r\n\x1a\n" + chunks + _chunk(b"IDAT", zlib.compress(filtered)) + _chunk(b"IEND", b"")


def png_declaring_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR (with a correct CRC) claims ``width x height``."""
    data = bytearray(encode(Image.new("L", (1, 1))))
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


# EXIF orientation -> the transpose that, applied to the upright picture, gives the stored pixels
# (the inverse of what ImageOps.exif_transpose applies).
STORED_FOR_ORIENTATION = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def upright_picture() -> Image.Image:
    """72 wide x 96 high: red top-left quadrant, the rest in three other colours."""
    image = Image.new("RGB", (72, 96), (0, 0, 220))
    image.paste((220, 0, 0), (0, 0, 36, 48))
    image.paste((0, 200, 0), (36, 0, 72, 48))
    image.paste((240, 240, 0), (0, 48, 36, 96))
    return image


def camera_jpeg(orientation: int) -> bytes:
    """What a camera writes: the sensor's pixels plus the EXIF orientation that makes them upright."""
    picture = upright_picture()
    transpose = STORED_FOR_ORIENTATION[orientation]
    stored = picture.transpose(transpose) if transpose is not None else picture
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def gzip_bomb_tar(path: Path, decompressed_bytes: int) -> None:
    """A ``.tar`` that is really a gzip of a tar holding one member of ``decompressed_bytes`` zeros."""
    header = tarfile.TarInfo("bomb.png")
    header.size = decompressed_bytes
    chunk = b"\x00" * (1024 * 1024)
    with gzip.open(path, "wb", compresslevel=9) as out:
        out.write(header.tobuf(format=tarfile.USTAR_FORMAT))
        remaining = decompressed_bytes
        while remaining:
            out.write(chunk[: min(len(chunk), remaining)])
            remaining -= min(len(chunk), remaining)
