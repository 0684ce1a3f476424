"""Images that lie about themselves, for the serving tests: a header declaring a canvas far larger
than the bytes behind it (decompression bombs), built byte by byte."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def tiff_declaring(width: int, height: int, mode: str = "F") -> bytes:
    """A small TIFF whose header declares ``width x height`` samples of ``mode`` (a float TIFF of
    8000x7999 is 256 MB once decoded, whatever its size on the wire)."""
    data = bytearray(encode(Image.new(mode, (8, 8)), "TIFF"))
    assert data[:2] == b"II"
    ifd = int.from_bytes(data[4:8], "little")
    for entry in range(int.from_bytes(data[ifd : ifd + 2], "little")):
        offset = ifd + 2 + 12 * entry
        tag, kind = int.from_bytes(data[offset : offset + 2], "little"), int.from_bytes(data[offset + 2 : offset + 4], "little")
        if tag in (256, 257):  # ImageWidth, ImageLength
            value = width if tag == 256 else height
            data[offset + 8 : offset + 12] = value.to_bytes(2 if kind == 3 else 4, "little").ljust(4, b"\0")
    return bytes(data)


def png_declaring(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header (with a correct CRC) declares ``width x height``."""
    data = bytearray(encode(Image.new("1", (1, 1))))
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)
