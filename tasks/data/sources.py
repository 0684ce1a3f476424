"""Readers of raw image-text sources: image folders with a records file, WebDataset tars, Parquet.

Layouts (``SourceSpec``; ``kind: auto`` recognises them from the location, ``resolve_layout``):

- a Hugging Face image folder: images plus ``metadata.jsonl`` or ``metadata.csv`` whose records
  name each image in ``file_name`` (relative to the folder) and usually carry the caption in ``text``;
- the platform's image folder: ``captions.jsonl`` with ``image`` and ``caption`` (the demo's);
- any records file you name (``records_file``): JSON Lines, CSV with a header, or one JSON list of
  records such as LLaVA's instruction data (``{"id", "image", "conversations": [...]}``), read in
  chunks however large; the field names are options (``image_field``, ``caption_field``, ``id_field``);
- WebDataset shards (``*.tar``; caption in a ``.txt`` member or a key of the ``.json`` member);
- Parquet files (one file, or every ``*.parquet`` under a folder as in a Hugging Face dataset's
  ``data/``; image bytes or ``{bytes, path}`` structs, caption column ``caption`` or ``text``).

A location that holds none of them fails at once with a message naming what was expected and what
was found, instead of quarantining every item.

Every reader yields ``RawItem``s lazily (one image in memory at a time) from a local path or any
fsspec URL (``s3://bucket/prefix`` via s3fs). Readers never decide what is good data; they only
report what they found. Anything a reader cannot turn into an item (a record that is not JSON, a
member name that tries to leave the folder, an image file that is missing) still comes out as a
``RawItem`` with ``reader_problem`` set, so validation quarantines it with a reason and the counts
reconcile. Nothing is ever extracted to disk, so a hostile member name cannot write anywhere.

What a reader reads is bounded, whatever the source holds (``ReadLimits``):

- only regular files are read. On a local source every path is resolved to its real path first,
  and a file or directory whose real path is outside the source folder (a symlink to /etc/passwd,
  to /dev/zero, to another tree) is never opened: its item is quarantined naming the symlink and
  its target. A FIFO, socket or device is never opened for reading either (opened non-blocking
  and checked with ``fstat``, so a FIFO named ``.png`` cannot hang the ingest);
- an image file, a tar member and a Parquet cell are read only up to ``max_file_bytes``; a records
  line up to ``max_record_bytes``; a compressed tar is decompressed only up to
  ``max_compression_ratio`` times its size on disk (a gzip bomb named ``.tar`` stops there and the
  rest of that archive is quarantined);
- a location that does not exist raises ``SourceNotFoundError`` before anything is read.
"""

from __future__ import annotations

import bz2
import csv
import errno
import gzip
import hashlib
import io
import itertools
import json
import lzma
import os
import posixpath
import re
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

from pydantic import BaseModel, Field

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
CAPTION_SUFFIXES = ("txt", "caption")
MEBIBYTE = 1024 * 1024


class SourceError(Exception):
    """A source that cannot be read at all (its records file is a symlink out, a FIFO, ...); never retried."""


class SourceNotFoundError(SourceError, FileNotFoundError):
    """The location of a source does not exist (or holds nothing of its kind); never retried."""


class ReadLimits(BaseModel):
    """Bounds on what a reader reads, so that no source can exhaust memory or hang the ingest."""

    max_file_bytes: int = Field(default=256 * MEBIBYTE, ge=1)
    """Largest image file, tar member or Parquet cell that is read (larger ones are quarantined
    unread). 256 MiB is far above any photo: a 48-megapixel JPEG is ~15 MB, a 48-megapixel PNG ~100 MB."""

    max_record_bytes: int = Field(default=16 * MEBIBYTE, ge=1)
    """Longest line (JSONL) or row (CSV) of a records file; a longer one is one ``bad_record``."""

    max_compression_ratio: float = Field(default=100.0, gt=1.0)
    """A compressed tar is decompressed up to this many times its size on disk (and never less than
    ``max_file_bytes``). Shards of images barely compress (~1x) and text-heavy ones reach ~10x;
    a gzip of zeros reaches 1000x."""


class ReadRefused(Exception):
    """A file the reader will not read; ``reason`` is a ``QuarantineReason`` value."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class StreamLimitExceeded(Exception):
    """A decompressed stream grew past its limit (a decompression bomb)."""


@dataclass
class RawItem:
    """One raw image-text pair as a reader found it; nothing is checked yet."""

    item_id: str
    """Identifier within its source (file stem, tar key, parquet row id)."""

    source_uri: str
    """Where it came from, precise enough to find it again (file, tar member, parquet row)."""

    image_bytes: bytes | None = None
    """The encoded image exactly as stored."""

    image_name: str | None = None
    """Original file or member name, for the extension."""

    caption: Any = None
    """Caption as found: ``str``; ``bytes`` when the reader could not decode it as UTF-8; any other
    type when the record held one (a list, a number): validation decides."""

    extra: dict[str, Any] = field(default_factory=dict)
    """Other record fields (e.g. ``true_caption``, ``conversations``), carried into the sample metadata."""

    reader_problem: tuple[str, str] | None = None
    """``(reason, detail)`` if the reader could not produce a usable item (always quarantined)."""

    source_root: str = ""
    """URI of the source location the reader was given (folder, tar folder, parquet folder)."""

    _digest: tuple[bytes, str] | None = field(default=None, init=False, repr=False, compare=False)
    """``(image_bytes, sha256)`` of the last ``image_sha256()``: the bytes object itself is kept, so a
    replaced ``image_bytes`` is never taken for the one hashed."""

    def image_sha256(self) -> str | None:
        """sha256 (hex) of ``image_bytes``, None without bytes. Computed once per item: the ingest's
        source hash and the sample's ``original_sha256`` (and ``image_sha256`` when the bytes are
        stored as they came) all use it."""
        data = self.image_bytes
        if data is None:
            return None
        if self._digest is None or self._digest[0] is not data:
            self._digest = (data, hashlib.sha256(data).hexdigest())
        return self._digest[1]

    @property
    def relative_uri(self) -> str:
        """``source_uri`` relative to the source location: what sample metadata records, so the
        same data ingested from another checkout or mount gives the same dataset hash."""
        if not self.source_root:
            return self.source_uri
        return self.source_uri.replace(self.source_root.rstrip("/") + "/", "")


def _fs_and_path(location: str):
    """fsspec filesystem + path; ``s3://`` uses the platform's S3 endpoint (EVE_S3_ENDPOINT) when set."""
    from fsspec.core import url_to_fs

    location = str(location)
    options = {}
    if location.startswith("s3://"):
        from tasks.platform import PlatformSettings

        endpoint = PlatformSettings.load().s3_endpoint_url
        if endpoint:
            options["endpoint_url"] = endpoint
    return url_to_fs(location, **options)


def _is_local(fs) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def _join(root: str, relative: str) -> str:
    """Join inside an fsspec filesystem (paths there are always '/'-separated, without protocol)."""
    return f"{root.rstrip('/')}/{relative}"


def safe_relative_path(name: str) -> str | None:
    """``name`` normalised if it stays inside its folder, else None (absolute, ``..``, drive letters)."""
    if not name or "\x00" in name:
        return None
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        return None
    normalised = posixpath.normpath(unified)
    if normalised == "." or normalised.startswith("../") or normalised == "..":
        return None
    return normalised


# ------------------------------------------------------------------------------------- safe file access

_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def _kind_of(mode: int) -> str:
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


class SourceFiles:
    """Reads files of one source location: regular files inside the location only, size-capped.

    On a local filesystem, paths are resolved with ``os.path.realpath`` and must stay under the real
    path of the location; a file is opened with ``O_NONBLOCK`` and checked with ``fstat`` before a
    byte is read. Object stores (S3) have neither symlinks nor special files: there the size from
    the listing is checked before reading, and the read itself is capped too.
    """

    def __init__(self, fs, root: str, limits: ReadLimits) -> None:
        self.fs = fs
        self.root = root.rstrip("/") or "/"
        self.limits = limits
        self.local = _is_local(fs)
        self.real_root = os.path.realpath(self.root) if self.local else self.root

    def uri(self, path: str) -> str:
        return self.fs.unstrip_protocol(path)

    def _describe_escape(self, path: str, real: str) -> str:
        relative = os.path.relpath(path, self.root)
        links = []
        current = self.root
        for part in relative.split(os.sep):
            current = os.path.join(current, part)
            if os.path.islink(current):
                links.append(f"{os.path.relpath(current, self.root)} -> {os.readlink(current)}")
        via = f" through the symlink {', '.join(links)}" if links else ""
        return f"{relative} resolves to {real}{via}, outside the source folder {self.real_root}"

    def check_inside(self, path: str) -> str:
        """The real path of ``path`` if it lies under the source folder; raises ``ReadRefused`` if not."""
        if not self.local:
            return path
        real = os.path.realpath(path)
        if real != self.real_root and not real.startswith(self.real_root.rstrip(os.sep) + os.sep):
            raise ReadRefused("unsafe_path", self._describe_escape(path, real))
        return real

    def open_regular(self, path: str) -> tuple[BinaryIO, int]:
        """``(binary handle, size)`` of a regular file under the source folder; raises ``ReadRefused``
        (outside, not a regular file, missing) without reading anything."""
        name = self.uri(path)
        if not self.local:
            try:
                info = self.fs.info(path)
            except FileNotFoundError as exc:
                raise ReadRefused("missing_image", f"{name}: not found") from exc
            if info.get("type") != "file":
                raise ReadRefused("not_regular_file", f"{name} is a {info.get('type')}, not a file")
            return self.fs.open(path, "rb"), int(info.get("size") or 0)
        real = self.check_inside(path)
        try:
            # O_NONBLOCK: opening a FIFO for reading returns at once instead of waiting for a writer.
            descriptor = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError as exc:
            raise ReadRefused("missing_image", f"{name}: not found") from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # swapped for a symlink after the check
                raise ReadRefused("unsafe_path", f"{name} became a symlink while being read") from exc
            if exc.errno in (errno.ENXIO, errno.EISDIR):
                raise ReadRefused("not_regular_file", f"{name} is not a regular file ({exc.strerror})") from exc
            raise
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            os.close(descriptor)
            raise ReadRefused("not_regular_file", f"{name} is {_kind_of(status.st_mode)}, not a regular file; it is never read")
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb"), status.st_size

    def read_capped(self, path: str) -> bytes:
        """All bytes of a regular file under the source folder, at most ``max_file_bytes``."""
        cap = self.limits.max_file_bytes
        handle, size = self.open_regular(path)
        with handle:
            if size > cap:
                raise ReadRefused("file_too_large", f"{self.uri(path)} is {size} bytes, over the limit of {cap} bytes per file; not read")
            data = handle.read(cap + 1)
        if len(data) > cap:  # grew while being read, or the listing's size was wrong
            raise ReadRefused("file_too_large", f"{self.uri(path)} holds more than {cap} bytes (the limit per file); not read")
        return data


def _refused_item(files: SourceFiles, path: str, refused: ReadRefused) -> RawItem:
    """The quarantine item standing for a whole file (a tar, a Parquet file, a folder) that was not read."""
    return RawItem(item_id=posixpath.basename(path.rstrip("/")), source_uri=files.uri(path),
                   reader_problem=(refused.reason, refused.detail))


def _bounded_lines(handle: BinaryIO, max_bytes: int, chunk_bytes: int = 1024 * 1024) -> Iterator[tuple[int, bytes | None]]:
    """``(line number, line)`` of a binary stream (any file-like with ``read``); a line longer than
    ``max_bytes`` comes as None and is skipped without ever holding more than ``max_bytes`` of it."""
    line_number = 0
    buffer = bytearray()
    skipping = False  # inside an over-long line: drop bytes up to its newline
    while chunk := handle.read(chunk_bytes):
        buffer += chunk
        start = 0
        while (newline := buffer.find(b"\n", start)) >= 0:
            line, start = bytes(buffer[start : newline + 1]), newline + 1
            if skipping:  # the end of an over-long line, already reported
                skipping = False
                continue
            line_number += 1
            yield (line_number, None) if len(line) > max_bytes else (line_number, line)
        del buffer[:start]
        if len(buffer) > max_bytes and not skipping:
            line_number += 1
            skipping = True
            yield line_number, None
        if skipping:
            buffer.clear()
    if buffer and not skipping:
        yield line_number + 1, bytes(buffer)


# ------------------------------------------------------------------------------------------ records


def _records_from_jsonl(handle: BinaryIO, uri: str, max_bytes: int) -> Iterator[tuple[int, Any, str]]:
    for line_number, line in _bounded_lines(handle, max_bytes):
        if line is None:
            yield line_number, None, f"{uri}:{line_number}: line longer than {max_bytes} bytes"
            continue
        if not line.strip():
            continue
        try:
            # surrogateescape keeps non-UTF-8 bytes recoverable instead of failing the record;
            # validation then names the field that holds them
            yield line_number, json.loads(line.decode("utf-8", errors="surrogateescape")), ""
        except json.JSONDecodeError as exc:
            yield line_number, None, f"{uri}:{line_number}: not a JSON object ({exc.msg})"
        except RecursionError:
            yield line_number, None, f"{uri}:{line_number}: JSON nested too deeply"


class _BoundedTextLines:
    """Decoded lines of a binary stream for ``csv``; an over-long line is never held: it reaches ``csv``
    as an empty line and is remembered, so that its row is reported as a bad record."""

    def __init__(self, handle: BinaryIO, max_bytes: int) -> None:
        self._lines = _bounded_lines(handle, max_bytes)
        self.overlong_line: int | None = None

    def __iter__(self) -> "_BoundedTextLines":
        return self

    def __next__(self) -> str:
        line_number, line = next(self._lines)
        if line is None:
            self.overlong_line = line_number
            return "\n"
        return line.decode("utf-8", errors="surrogateescape")


def _records_from_csv(handle: BinaryIO, uri: str, max_bytes: int) -> Iterator[tuple[int, Any, str]]:
    lines = _BoundedTextLines(handle, max_bytes)
    reader = csv.DictReader(lines)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            row = None
        except csv.Error as exc:  # a field over csv's size limit, a NUL byte, ...
            yield reader.line_num, None, f"{uri}:{reader.line_num}: not a CSV row ({exc})"
            continue
        if lines.overlong_line is not None:  # csv skipped it as an empty line
            yield lines.overlong_line, None, f"{uri}:{lines.overlong_line}: line longer than {max_bytes} bytes"
            lines.overlong_line = None
        if row is None:
            return
        yield reader.line_num, dict(row), ""


_JSON_STRUCTURE = re.compile(rb'["\\\[\]{},]')


def _records_from_json_array(
    handle: BinaryIO, uri: str, max_bytes: int, chunk_bytes: int = 1024 * 1024
) -> Iterator[tuple[int, Any, str]]:
    """``(index, record, problem)`` of a file holding one JSON list of records (LLaVA's
    ``llava_v1_5_mix665k.json``), read in chunks: a 1 GB list is never held whole, and an element
    longer than ``max_bytes`` is one bad record, skipped without being held. A truncated list ends
    with one bad record standing for the rest. Raises ``SourceError`` when the file is not a JSON list."""
    index = depth = 0  # depth: nesting inside the list (0 between its elements)
    in_string = started = ended = overlong = carry_escape = False
    element = bytearray()

    def finish() -> Iterator[tuple[int, Any, str]]:
        nonlocal index, overlong
        text = bytes(element).strip()
        element.clear()
        if not text and not overlong:
            return
        index += 1
        if overlong:
            overlong = False
            yield index, None, f"{uri}#{index}: record longer than {max_bytes} bytes"
            return
        try:
            yield index, json.loads(text.decode("utf-8", errors="surrogateescape")), ""
        except json.JSONDecodeError as exc:
            yield index, None, f"{uri}#{index}: not a JSON value ({exc.msg})"
        except RecursionError:
            yield index, None, f"{uri}#{index}: JSON nested too deeply"

    while not ended and (chunk := handle.read(chunk_bytes)):
        position = 0
        if not started:
            stripped = chunk.lstrip(b"\xef\xbb\xbf \t\r\n")
            if not stripped:
                continue
            if not stripped.startswith(b"["):
                raise SourceError(f"{uri}: expected a JSON list of records ([{{...}}, ...]), found {stripped[:20]!r}")
            position = len(chunk) - len(stripped) + 1
            started = True
        escaped_at = 0 if carry_escape else -1  # a byte escaped by a backslash: never structure
        carry_escape = False
        segment_start = position
        for match in _JSON_STRUCTURE.finditer(chunk, position):
            if match.start() == escaped_at:
                continue
            char = match.group()
            if in_string:
                if char == b"\\":
                    escaped_at = match.end()
                    carry_escape = escaped_at == len(chunk)
                elif char == b'"':
                    in_string = False
                continue
            if char == b'"':
                in_string = True
            elif char in (b"[", b"{"):
                depth += 1
            elif char in (b"]", b"}") and depth > 0:
                depth -= 1
            elif depth == 0 and char in (b",", b"]"):
                if not overlong:
                    element.extend(chunk[segment_start : match.start()])
                yield from finish()
                segment_start = match.end()
                if char == b"]":
                    ended = True
                    break
        else:
            if not overlong:
                element.extend(chunk[segment_start:])
        if len(element) > max_bytes:
            element.clear()
            overlong = True
    if not started:
        raise SourceError(f"{uri}: empty; expected a JSON list of records")
    if not ended:  # a truncated file: what parses of the last element is kept, the rest is one bad record
        if element.strip().endswith((b"}", b"]", b'"')):
            yield from finish()
        yield index + 1, None, f"{uri}#{index + 1}: the JSON list ends without its closing ']' (a truncated file); the rest is unreadable"


RecordsFormat = Literal["jsonl", "csv", "json"]


def records_format(records_file: str) -> RecordsFormat:
    """How a records file is read, by its extension: ``.csv`` CSV with a header row, ``.json`` one
    JSON list of records (LLaVA's layout), anything else JSON Lines."""
    lowered = records_file.lower()
    return "csv" if lowered.endswith(".csv") else "json" if lowered.endswith(".json") else "jsonl"


_RECORD_PARSERS = {
    # format -> (parser, anchor of a record's position in its URI: line number or list index)
    "jsonl": (_records_from_jsonl, "L"),
    "csv": (_records_from_csv, "L"),
    "json": (_records_from_json_array, ""),
}


def _decode_text(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _restore_bytes(value: Any) -> Any:
    """Undo surrogateescape on a string: one that was not UTF-8 comes back as its original bytes.
    Anything that is not a string (a list, a number) is returned as it is, for validation to judge."""
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        try:
            return value.encode("utf-8", errors="surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate from a JSON \\ud800 escape: not bytes, not text
            return value


def type_phrase(value: Any) -> str:
    """``a list``, ``an int``: the type of ``value`` for a reason's detail."""
    name = type(value).__name__
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def _rooted(items: Iterator[RawItem], root_uri: str) -> Iterator[RawItem]:
    for item in items:
        item.source_root = root_uri
        yield item


def _source_error(kind: str, location: str, what: str) -> SourceNotFoundError:
    return SourceNotFoundError(f"{'' if kind == 'auto' else kind + ' '}source {location}: {what}")


def read_image_folder(
    location: str,
    records_file: str = "captions.jsonl",
    image_field: str = "image",
    caption_field: str = "caption",
    id_field: str = "id",
    limits: ReadLimits | None = None,
) -> Iterator[RawItem]:
    """Items of an image folder described by a records file (JSONL or CSV, by extension).

    Each record names its image relative to the folder (``image_field``); a name that would leave
    the folder (by ``..``, an absolute path or a symlink) is reported as ``unsafe_path``, a record
    without the field or a missing file as ``missing_image``. Extra record fields (e.g.
    ``conversations``, ``true_caption``) are carried along in ``RawItem.extra``. Raises
    ``SourceNotFoundError`` at once if the folder or its records file does not exist.
    """
    fs, root = _fs_and_path(location)
    _check_image_folder(fs, root, location, records_file)
    files = SourceFiles(fs, root, limits or ReadLimits())
    return _rooted(_read_image_folder(files, location, records_file, image_field, caption_field, id_field), fs.unstrip_protocol(root))


def _check_image_folder(fs, root: str, location: str, records_file: str) -> None:
    if not fs.isdir(root):
        raise _source_error("image_folder", location, "no such folder")
    if not fs.exists(_join(root, records_file)):
        raise _source_error("image_folder", location, f"no records file {records_file!r} in it")


def _read_image_folder(
    files: SourceFiles,
    location: str,
    records_file: str,
    image_field: str,
    caption_field: str,
    id_field: str,
) -> Iterator[RawItem]:
    records_path = _join(files.root, records_file)
    records_uri = files.uri(records_path)
    try:
        handle, _ = files.open_regular(records_path)
    except ReadRefused as refused:  # the records file itself is a symlink out or a FIFO
        raise SourceError(f"image_folder source {location}: records file refused: {refused.detail}") from None
    parse, anchor = _RECORD_PARSERS[records_format(records_file)]
    with handle:
        for line_number, record, problem in parse(handle, records_uri, files.limits.max_record_bytes):
            yield _item_from_record(files, location, record_uri=f"{records_uri}#{anchor}{line_number}", line_number=line_number,
                                    record=record, problem=problem, image_field=image_field,
                                    caption_field=caption_field, id_field=id_field)


def _item_from_record(
    files: SourceFiles, location: str, *, record_uri: str, line_number: int, record: Any, problem: str,
    image_field: str, caption_field: str, id_field: str,
) -> RawItem:
    if record is None or not isinstance(record, dict):
        return RawItem(
            item_id=f"line-{line_number}",
            source_uri=record_uri,
            reader_problem=("bad_record", problem or f"{record_uri}: record is {type_phrase(record)}, not an object"),
        )
    image_value = record.get(image_field)
    image_name = image_value if isinstance(image_value, str) else ""
    raw_id = record.get(id_field)
    item_id = str(raw_id) if raw_id not in (None, "") else (
        posixpath.splitext(posixpath.basename(image_name))[0] or f"line-{line_number}"
    )
    item = RawItem(
        item_id=item_id,
        source_uri=record_uri,
        image_name=image_name or None,
        caption=_restore_bytes(record.get(caption_field)),
        extra={k: v for k, v in record.items() if k not in (image_field, caption_field, id_field)},
    )
    if image_value is None or image_value == "":
        item.reader_problem = ("missing_image", f"{record_uri}: the record has no {image_field!r} field")
        return item
    if not isinstance(image_value, str):
        item.reader_problem = ("bad_record", f"{record_uri}: field {image_field!r} is {type_phrase(image_value)}, not a path")
        return item
    relative = safe_relative_path(image_name)
    if relative is None:
        item.reader_problem = ("unsafe_path", f"image path {image_name!r} leaves the folder {location}")
        return item
    image_path = _join(files.root, relative)
    item.source_uri = f"{files.uri(image_path)} ({record_uri})"
    try:
        item.image_bytes = files.read_capped(image_path)
    except ReadRefused as refused:
        item.reader_problem = (refused.reason, refused.detail)
    except IsADirectoryError:
        item.reader_problem = ("not_regular_file", f"{files.uri(image_path)} is a directory")
    return item


# ----------------------------------------------------------------------------------------- WebDataset


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset convention: key is everything before the first dot of the basename."""
    directory, base = posixpath.split(name)
    stem, _, suffix = base.partition(".")
    return posixpath.join(directory, stem), suffix.lower()


def _unsafe_member_reason(member: tarfile.TarInfo) -> str | None:
    if safe_relative_path(member.name) is None:
        return f"member name {member.name!r} leaves the archive folder"
    if member.issym() or member.islnk():
        return f"member {member.name!r} is a link (to {member.linkname!r}); links are never followed"
    if not member.isfile() and not member.isdir():
        return f"member {member.name!r} is a device or special file"
    return None


@dataclass
class _SampleGroup:
    """The members of one WebDataset sample (consecutive members sharing a key)."""

    key: str
    occurrence: int
    """1 for the first sample with this key in the archive, 2 for a repeated key, ..."""
    members: dict[str, bytes] = field(default_factory=dict)
    problem: tuple[str, str] | None = None

    def source_uri(self, uri: str) -> str:
        # A repeated key gets its occurrence, so every item has its own URI (and shard key).
        return f"{uri}#{self.key}" if self.occurrence == 1 else f"{uri}#{self.key}~{self.occurrence}"


def _item_from_group(group: _SampleGroup, uri: str, caption_field: str = "caption") -> RawItem:
    where = group.source_uri(uri)
    item = RawItem(item_id=posixpath.basename(group.key), source_uri=where)
    if group.occurrence > 1:
        item.extra["duplicate_key_occurrence"] = group.occurrence
    for suffix, payload in group.members.items():
        if suffix in IMAGE_SUFFIXES and item.image_bytes is None:
            item.image_bytes, item.image_name = payload, f"{group.key}.{suffix}"
        elif suffix in CAPTION_SUFFIXES:
            item.caption = _decode_text(payload)
        elif suffix == "json":
            try:
                record = json.loads(payload.decode("utf-8", errors="surrogateescape"))
            except json.JSONDecodeError as exc:
                item.reader_problem = ("bad_record", f"{where}.json: not JSON ({exc.msg})")
                continue
            except RecursionError:
                item.reader_problem = ("bad_record", f"{where}.json: JSON nested too deeply")
                continue
            if isinstance(record, dict):
                if item.caption is None and caption_field in record:
                    item.caption = _restore_bytes(record.pop(caption_field))
                item.extra.update({k: v for k, v in record.items() if k != "key"})
    if group.problem is not None:
        item.reader_problem = group.problem
    elif item.image_bytes is None and item.reader_problem is None:
        item.reader_problem = ("missing_image", f"{where}: no image member ({sorted(group.members)})")
    return item


def read_webdataset(location: str, limits: ReadLimits | None = None, caption_field: str = "caption") -> Iterator[RawItem]:
    """Items of one WebDataset tar, or of every ``*.tar`` under a folder/prefix (sorted).

    Members are streamed and grouped by key; a member whose name is absolute, contains ``..``,
    or is a link/device becomes its own ``unsafe_member`` item and is never extracted. A key that
    repeats (in one tar, or a suffix twice in one sample) starts a new sample with its own URI.
    The caption is a ``.txt``/``.caption`` member, else ``caption_field`` of the ``.json`` member.
    Raises ``SourceNotFoundError`` at once if the location does not exist or holds no tar.
    """
    fs, root = _fs_and_path(location)
    limits = limits or ReadLimits()
    _check_webdataset(fs, root, location)
    if root.endswith(".tar"):
        files = SourceFiles(fs, posixpath.dirname(root), limits)
        return _rooted(_read_tars(files, [root], caption_field), fs.unstrip_protocol(posixpath.dirname(root)))
    files = SourceFiles(fs, root, limits)
    tar_paths, escapes = _find_tars(files)
    return _rooted(_chain_items(escapes, _read_tars(files, tar_paths, caption_field)), fs.unstrip_protocol(root))


def _check_webdataset(fs, root: str, location: str) -> None:
    if root.endswith(".tar"):
        if not fs.exists(root):
            raise _source_error("webdataset", location, "no such file")
        return
    if not fs.isdir(root):
        raise _source_error("webdataset", location, "no such folder or prefix")
    if not _holds_tars(fs, root):
        raise _source_error("webdataset", location, "no *.tar files under it")


def _holds_tars(fs, root: str) -> bool:
    """Whether anything under ``root`` is a ``*.tar`` or (locally) a directory symlink to report."""
    if not _is_local(fs):
        return any(path.endswith(".tar") for path in fs.find(root))
    for directory, folders, names in os.walk(root, followlinks=False):
        if any(name.endswith(".tar") for name in names):
            return True
        if any(os.path.islink(os.path.join(directory, name)) for name in folders):
            return True
    return False


def _chain_items(first: list[RawItem], rest: Iterator[RawItem]) -> Iterator[RawItem]:
    yield from first
    yield from rest


def _find_tars(files: SourceFiles) -> tuple[list[str], list[RawItem]]:
    """Sorted ``*.tar`` paths under the source folder, and one quarantine item per symlink that leads out."""
    if not files.local:
        return sorted(p for p in files.fs.find(files.root) if p.endswith(".tar")), []
    found, escapes = [], []
    for directory, subdirectories, names in os.walk(files.root, followlinks=False):
        for name in sorted(subdirectories):  # symlinked directories: never walked into
            path = os.path.join(directory, name)
            if os.path.islink(path):
                try:
                    files.check_inside(path)  # one inside is walked under its real name anyway
                except ReadRefused as refused:
                    escapes.append(_refused_item(files, path, refused))
        found += [os.path.join(directory, name) for name in names if name.endswith(".tar")]
    unique, seen = [], set()
    # A symlink to another tar of the folder would read its samples twice: the real file is read once.
    for path in sorted(found, key=lambda candidate: (os.path.islink(candidate), candidate)):
        real = os.path.realpath(path)
        if real not in seen:
            unique.append(path)
            seen.add(real)
    return sorted(unique), escapes


def _unreadable_rest(uri: str, produced: int, exc: BaseException, reason: str = "unreadable_source") -> RawItem:
    """One quarantine item standing for the unreadable remainder of a corrupt or truncated file."""
    return RawItem(
        item_id=posixpath.basename(uri.split("://", 1)[-1]) or "source",
        source_uri=f"{uri}#after-item-{produced}",
        reader_problem=(
            reason,
            f"{uri}: unreadable after {produced} item(s) ({exc.__class__.__name__}: {exc}); the rest of the file is quarantined",
        ),
    )


_CORRUPT_STREAM_ERRORS = (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)


class _CappedStream(io.RawIOBase):
    """A decompressed stream that raises ``StreamLimitExceeded`` once more than ``limit`` bytes came out,
    and ``tarfile.ReadError`` for corrupt compressed data (network errors pass through, to be retried)."""

    def __init__(self, inner: BinaryIO, limit: int, what: str) -> None:
        self.inner, self.limit, self.what, self.produced = inner, limit, what, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        try:
            data = self.inner.read(size if size is not None and size >= 0 else self.limit + 1 - self.produced)
        except _CORRUPT_STREAM_ERRORS as exc:
            raise tarfile.ReadError(f"{self.what}: corrupt compressed data ({exc.__class__.__name__}: {exc})") from exc
        except OSError as exc:
            if str(exc) == "Invalid data stream":  # what bz2 raises for corrupt data
                raise tarfile.ReadError(f"{self.what}: corrupt bzip2 data") from exc
            raise
        self.produced += len(data)
        if self.produced > self.limit:
            raise StreamLimitExceeded(f"{self.what} decompressed past {self.limit} bytes")
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


_DECOMPRESSORS = (
    (b"\x1f\x8b", "gzip", lambda handle: gzip.GzipFile(fileobj=handle, mode="rb")),
    (b"BZh", "bzip2", lambda handle: bz2.BZ2File(handle, mode="rb")),
    (b"\xfd7zXZ\x00", "xz", lambda handle: lzma.LZMAFile(handle, mode="rb")),
)


def _tar_stream(handle: BinaryIO, size_on_disk: int, uri: str, limits: ReadLimits) -> BinaryIO:
    """The uncompressed tar stream of ``handle``; a compressed one is capped (decompression bombs)."""
    magic = handle.read(6)
    handle.seek(0)
    for prefix, name, opener in _DECOMPRESSORS:
        if magic.startswith(prefix):
            limit = max(limits.max_file_bytes, int(limits.max_compression_ratio * max(size_on_disk, 1)))
            return _CappedStream(opener(handle), limit, f"{uri} ({name}, {size_on_disk} bytes on disk)")
    return handle


def _items_of_file(
    files: SourceFiles,
    path: str,
    read: Callable[[BinaryIO, int, str], Iterator[RawItem]],
    corrupt_errors: tuple[type[BaseException], ...],
) -> Iterator[RawItem]:
    """The items ``read(handle, size, uri)`` finds in one container file (a tar, a Parquet file): a
    file that is refused is one quarantine item, and a container that turns out corrupt (one of
    ``corrupt_errors``) or a decompression bomb ends with one item standing for the rest of it.
    Network errors (OSError) propagate, so that the task retries."""
    uri = files.uri(path)
    try:
        handle, size = files.open_regular(path)
    except ReadRefused as refused:
        yield _refused_item(files, path, refused)
        return
    produced = 0
    with handle:
        try:
            for item in read(handle, size, uri):
                produced += 1
                yield item
        except StreamLimitExceeded as exc:
            yield _unreadable_rest(uri, produced, exc, reason="decompression_bomb")
        except corrupt_errors as exc:
            yield _unreadable_rest(uri, produced, exc)


def _read_tars(files: SourceFiles, tar_paths: list[str], caption_field: str = "caption") -> Iterator[RawItem]:
    def read(handle: BinaryIO, size: int, uri: str) -> Iterator[RawItem]:
        return _read_one_tar(_tar_stream(handle, size, uri, files.limits), uri, files.limits, caption_field)

    for tar_path in tar_paths:
        yield from _items_of_file(files, tar_path, read, (tarfile.TarError, EOFError, zlib.error))


def _read_one_tar(stream: BinaryIO, uri: str, limits: ReadLimits, caption_field: str = "caption") -> Iterator[RawItem]:
    occurrences: dict[str, int] = {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        group: _SampleGroup | None = None
        for member in tar:
            problem = _unsafe_member_reason(member)
            if problem is not None:
                if group is not None:  # keep source order: the pending sample came first
                    yield _item_from_group(group, uri, caption_field)
                    group = None
                yield RawItem(
                    item_id=posixpath.basename(member.name.rstrip("/")) or "member",
                    source_uri=f"{uri}#{member.name}",
                    image_name=member.name,
                    reader_problem=("unsafe_member", problem),
                )
                continue
            if member.isdir():
                continue
            key, suffix = _split_member(member.name)
            if group is not None and (key != group.key or suffix in group.members):
                yield _item_from_group(group, uri, caption_field)
                group = None
            if group is None:
                occurrences[key] = occurrences.get(key, 0) + 1
                group = _SampleGroup(key, occurrences[key])
            if member.size > limits.max_file_bytes:
                # never read: in stream mode tarfile skips the member's data on the next step
                group.members[suffix] = b""
                group.problem = ("file_too_large", f"{uri}#{member.name} is {member.size} bytes, over the limit of "
                                 f"{limits.max_file_bytes} bytes per member; not read")
                continue
            extracted = tar.extractfile(member)
            group.members[suffix] = extracted.read() if extracted is not None else b""
        if group is not None:
            yield _item_from_group(group, uri, caption_field)


# -------------------------------------------------------------------------------------------- Parquet


def read_parquet(
    location: str,
    image_column: str = "image",
    caption_column: str = "caption",
    id_column: str | None = "id",
    batch_size_rows: int = 64,
    limits: ReadLimits | None = None,
) -> Iterator[RawItem]:
    """Items of a Parquet file, or of every ``*.parquet`` under a folder/prefix (sorted; the layout of
    a Hugging Face dataset's ``data/`` folder), read in small row batches.

    ``image_column`` may hold raw bytes or a HF-datasets style struct ``{"bytes", "path"}``.
    Raises ``SourceNotFoundError`` at once if the location does not exist or holds no Parquet file.
    """
    fs, path = _fs_and_path(location)
    paths = _parquet_paths(fs, path, location)
    root = posixpath.dirname(path) if fs.isfile(path) else path
    files = SourceFiles(fs, root, limits or ReadLimits())
    rows = itertools.chain.from_iterable(
        _read_parquet_rows(files, file_path, image_column, caption_column, id_column, batch_size_rows) for file_path in paths
    )
    return _rooted(rows, fs.unstrip_protocol(root))


def _parquet_paths(fs, path: str, location: str) -> list[str]:
    """The Parquet files of a location: the file itself, or every ``*.parquet`` under the folder."""
    if fs.isfile(path):
        return [path]
    if not fs.isdir(path):
        raise _source_error("parquet", location, "no such file or folder")
    found = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
    if not found:
        raise _source_error("parquet", location, "no *.parquet files under it")
    return found


def _check_parquet(fs, path: str, location: str) -> None:
    _parquet_paths(fs, path, location)


def _read_parquet_rows(
    files: SourceFiles, path: str, image_column: str, caption_column: str, id_column: str | None, batch_size_rows: int
) -> Iterator[RawItem]:
    import pyarrow as pa

    def read(handle: BinaryIO, _size: int, uri: str) -> Iterator[RawItem]:
        return _parquet_items(handle, uri, image_column, caption_column, id_column, batch_size_rows, files.limits)

    # ArrowException: not a Parquet file, or a corrupt page
    yield from _items_of_file(files, path, read, (pa.ArrowException,))


def _parquet_items(
    handle: BinaryIO, uri: str, image_column: str, caption_column: str, id_column: str | None, batch_size_rows: int,
    limits: ReadLimits,
) -> Iterator[RawItem]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(handle)
    row_index = 0
    for batch in parquet.iter_batches(batch_size=batch_size_rows):
        for row in batch.to_pylist():
            image = row.get(image_column)
            if isinstance(image, dict):
                image = image.get("bytes")
            item_id = str(row.get(id_column)) if id_column and row.get(id_column) is not None else f"row-{row_index:09d}"
            caption = row.get(caption_column)
            extra = {k: v for k, v in row.items() if k not in (image_column, caption_column, id_column)}
            item = RawItem(
                item_id=item_id,
                source_uri=f"{uri}#row={row_index}",
                image_bytes=image if isinstance(image, bytes) else None,
                caption=_decode_text(caption) if isinstance(caption, bytes) else caption,
                extra=_jsonable(extra),
            )
            if image is None:
                item.reader_problem = ("missing_image", f"{uri}#row={row_index}: column {image_column!r} is null")
            elif not isinstance(image, bytes):
                item.reader_problem = ("bad_record", f"{uri}#row={row_index}: column {image_column!r} holds {type_phrase(image)}, not bytes")
            elif len(image) > limits.max_file_bytes:
                item.image_bytes = None
                item.reader_problem = ("file_too_large", f"{uri}#row={row_index}: the image is {len(image)} bytes, over the "
                                       f"limit of {limits.max_file_bytes} bytes per file")
            yield item
            row_index += 1


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        try:
            json.dumps(value)
            out[key] = value
        except (TypeError, ValueError):
            out[key] = repr(value)
    return out


# ---------------------------------------------------------------------------------------------- specs


SourceKind = Literal["auto", "image_folder", "webdataset", "parquet"]

HF_METADATA_FILES = ("metadata.jsonl", "metadata.csv")
"""Records files of a Hugging Face image folder (``datasets``' ``imagefolder`` builder): one record
per image, ``file_name`` relative to the folder, any other columns (a caption usually in ``text``)."""
PLATFORM_RECORDS_FILE = "captions.jsonl"
"""Records file of the platform's own image-folder layout (``image``, ``caption``; the demo's)."""
RECORD_FILE_SUFFIXES = (".jsonl", ".csv", ".json")

EXPECTED_LAYOUTS = (
    "a Hugging Face image folder (metadata.jsonl or metadata.csv with file_name and text)",
    f"an image folder with {PLATFORM_RECORDS_FILE} (image, caption) or a records file named by records_file "
    "(JSONL, CSV, or a LLaVA-style JSON list of {image, conversations})",
    "WebDataset shards (*.tar)",
    "Parquet files (*.parquet)",
)
"""What ``kind: auto`` recognises, in the order it looks; named in the error when nothing matches."""


class LayoutNotRecognisedError(SourceNotFoundError):
    """A location holds nothing of a known layout (or not of the kind the source names)."""


class SourceSpec(BaseModel):
    """One raw source to ingest (a flow parameter: Prefect draws it as a form).

    Only ``location`` is needed for the common layouts: ``kind: auto`` recognises a Hugging Face
    image folder, the platform's ``captions.jsonl`` folder, a LLaVA-style JSON file, WebDataset and
    Parquet, and the field names default to that layout's (``file_name``/``text`` for Hugging Face,
    ``image``/``caption`` otherwise). Set the fields when your records name them differently."""

    kind: SourceKind = "auto"
    """Layout: ``auto`` recognises it from what is at ``location`` (EXPECTED_LAYOUTS, in that order);
    ``image_folder`` (images + a JSONL, CSV or JSON-list records file), ``webdataset``, ``parquet``."""

    location: str
    """Local path or fsspec URL (``s3://bucket/prefix``): a folder, or one file (a records file such as
    LLaVA's ``llava_v1_5_mix665k.json`` with images relative to its folder, a ``.tar``, a ``.parquet``)."""

    records_file: str | None = None
    """image_folder: the records file relative to the folder (``.jsonl``, ``.csv``, or ``.json`` holding one
    list of records). None: ``metadata.jsonl``, ``metadata.csv`` or ``captions.jsonl``, the first present."""

    image_field: str | None = None
    """Record field / Parquet column with the image path (image folder) or bytes (Parquet). None: the
    layout's (``file_name`` in Hugging Face metadata, else ``image``)."""

    caption_field: str | None = None
    """Record field / column / WebDataset JSON key holding the caption. None: the layout's (``text`` in
    Hugging Face metadata; Parquet: ``caption``, else ``text``; otherwise ``caption``)."""

    id_field: str | None = None
    """Record field / column with an item id. None: ``id`` when present, else the image file's stem
    (image folder) or the row number (Parquet)."""

    limits: ReadLimits = Field(default_factory=ReadLimits)
    """Bounds on what is read (file, member and record sizes, decompression)."""

    def resolved(self) -> "SourceSpec":
        """This spec with the layout recognised and every field name filled in (``resolve_layout``)."""
        return resolve_layout(self)

    def describe(self) -> str:
        """One line: the layout and the field mapping in force (after ``resolved()``)."""
        if self.kind == "image_folder":
            hf = posixpath.basename(self.records_file or "") in HF_METADATA_FILES
            return (f"{'Hugging Face image folder' if hf else 'image folder'} {self.location} "
                    f"(records {self.records_file}: image <- {self.image_field!r}, caption <- {self.caption_field!r})")
        if self.kind == "parquet":
            return (f"Parquet {self.location} (image <- column {self.image_field!r}, "
                    f"caption <- column {self.caption_field!r})")
        return f"WebDataset {self.location} (caption <- .txt member, or {self.caption_field!r} of the .json member)"

    def read(self) -> Iterator[RawItem]:
        """The source's items; raises ``SourceNotFoundError`` at once if the location does not exist
        or (``kind: auto``) holds no known layout."""
        spec = self.resolved()
        if spec.kind == "image_folder":
            return read_image_folder(spec.location, records_file=spec.records_file, image_field=spec.image_field,
                                     caption_field=spec.caption_field, id_field=spec.id_field, limits=spec.limits)
        if spec.kind == "webdataset":
            return read_webdataset(spec.location, limits=spec.limits, caption_field=spec.caption_field)
        return read_parquet(spec.location, image_column=spec.image_field, caption_column=spec.caption_field,
                            id_column=spec.id_field, limits=spec.limits)


def _layout_error(spec: SourceSpec, what: str) -> LayoutNotRecognisedError:
    return LayoutNotRecognisedError(
        f"{'' if spec.kind == 'auto' else spec.kind + ' '}source {spec.location}: {what}; expected "
        + "; or ".join(EXPECTED_LAYOUTS)
    )


def _listing_hint(fs, root: str) -> str:
    """``found: a, b, c`` (the first names in a folder) for an error message."""
    try:
        names = sorted(posixpath.basename(p.rstrip("/")) + ("/" if fs.isdir(p) else "") for p in fs.ls(root, detail=False))
    except OSError:
        return "found nothing readable"
    if not names:
        return "the folder is empty"
    return "found " + ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def resolve_layout(spec: SourceSpec) -> SourceSpec:
    """The concrete reader and field names of a source (probing its location, reading no image).

    A file location is taken as what it is (``.tar``, ``.parquet``, or a records file whose folder
    holds the images); a folder is recognised by the first of EXPECTED_LAYOUTS it holds. Raises
    ``SourceNotFoundError`` when the location does not exist and ``LayoutNotRecognisedError``
    (naming what was expected and what was found) when it holds no layout of its ``kind``."""
    fs, root = _fs_and_path(spec.location)
    kind, location, records_file = spec.kind, spec.location, spec.records_file
    if fs.isfile(root):
        name = root.lower()
        file_kind = ("webdataset" if name.endswith(".tar") else "parquet" if name.endswith(".parquet")
                     else "image_folder" if name.endswith(RECORD_FILE_SUFFIXES) else None)
        if file_kind is None or kind not in ("auto", file_kind):
            raise _layout_error(spec, f"a file that is not a {kind if kind != 'auto' else 'known'} source file")
        kind = file_kind
        if kind == "image_folder":  # a records file: the images are relative to its folder
            location, records_file = posixpath.dirname(location.rstrip("/")) or ".", posixpath.basename(root)
    elif kind in ("auto", "image_folder") and fs.isdir(root):
        if records_file is None:
            records_file = next((candidate for candidate in (*HF_METADATA_FILES, PLATFORM_RECORDS_FILE)
                                 if fs.isfile(_join(root, candidate))), None)
        if records_file is not None:
            kind = "image_folder"
        elif kind == "image_folder":
            raise _source_error("image_folder", spec.location, "no records file (metadata.jsonl, metadata.csv or "
                                f"{PLATFORM_RECORDS_FILE}) in it; name yours with records_file ({_listing_hint(fs, root)})")
        elif _holds_tars(fs, root):
            kind = "webdataset"
        elif any(path.endswith(".parquet") for path in fs.find(root)):
            kind = "parquet"
        else:
            raise _layout_error(spec, f"no known layout ({_listing_hint(fs, root)})")
    elif kind == "auto":
        raise _source_error("auto", spec.location, "no such file or folder")
    hugging_face = kind == "image_folder" and posixpath.basename(records_file or "") in HF_METADATA_FILES
    image_field = spec.image_field or ("file_name" if hugging_face else "image")
    caption_field = spec.caption_field or ("text" if hugging_face else "caption")
    if kind == "parquet" and spec.caption_field is None:
        caption_field = _parquet_caption_column(fs, root, spec.location)
    return spec.model_copy(update={"kind": kind, "location": location, "records_file": records_file,
                                   "image_field": image_field, "caption_field": caption_field,
                                   "id_field": spec.id_field or "id"})


RECORDS_PEEKED = 20
"""Records read by ``check_source`` to see that the image field exists (text-only records, as in
LLaVA's mix, may come first: the check fails only when none of these has it)."""


def _check_image_field(fs, root: str, spec: SourceSpec) -> None:
    """Raise ``LayoutNotRecognisedError`` when none of the first records names an image in
    ``spec.image_field`` (the field names of the records are in the message)."""
    files = SourceFiles(fs, root, spec.limits)
    records_path = _join(files.root, spec.records_file)
    parse, _ = _RECORD_PARSERS[records_format(spec.records_file)]
    try:
        handle, _ = files.open_regular(records_path)
    except ReadRefused:
        return  # the reader refuses the source with the reason
    seen: set[str] = set()
    with handle:
        records = (record for _, record, _ in parse(handle, files.uri(records_path), spec.limits.max_record_bytes))
        for record in itertools.islice(records, RECORDS_PEEKED):
            if isinstance(record, dict):
                if record.get(spec.image_field) not in (None, ""):
                    return
                seen.update(map(str, record))
    if seen:
        raise LayoutNotRecognisedError(
            f"image_folder source {spec.location}: no record of {spec.records_file} names an image in "
            f"{spec.image_field!r} (the records have {sorted(seen)[:12]}); set image_field (and caption_field) "
            "to your field names"
        )


def _parquet_caption_column(fs, root: str, location: str) -> str:
    """``caption`` if the (first) Parquet file has that column, else ``text`` if it has that one."""
    import pyarrow.parquet as pq

    try:
        first = _parquet_paths(fs, root, location)[0]
        with fs.open(first, "rb") as handle:
            names = set(pq.read_schema(handle).names)
    except (SourceNotFoundError, OSError, ValueError):
        return "caption"  # the reader reports what is wrong with the file
    return "text" if "caption" not in names and "text" in names else "caption"


def check_source(spec: SourceSpec) -> None:
    """Raise ``SourceNotFoundError`` (one line naming the source) if its location does not exist or
    holds no known layout; reads no image.

    Answered in seconds for a local path or an S3 prefix, and never retried: a location that is
    not there does not appear by waiting."""
    resolved = spec.resolved()
    fs, root = _fs_and_path(resolved.location)
    if resolved.kind == "image_folder":
        _check_image_folder(fs, root, resolved.location, resolved.records_file)
        _check_image_field(fs, root, resolved)
    elif resolved.kind == "webdataset":
        _check_webdataset(fs, root, resolved.location)
    else:
        _check_parquet(fs, root, resolved.location)


def source_fingerprint(spec: SourceSpec) -> str:
    """A cheap content fingerprint of a source: sha256 over (name, size, mtime/ETag) of its files.

    Used as a cache key: a changed, added or removed file changes it, without reading the bytes.
    A records file given as the location stands for its whole folder (the images are there).
    """
    try:
        location = spec.resolved().location
    except SourceError:  # not there: the ingest itself reports it
        location = spec.location
    fs, root = _fs_and_path(location)
    if fs.isfile(root):
        listing = {root: fs.info(root)}
    else:
        listing = fs.find(root, detail=True)
    digest = hashlib.sha256(spec.model_dump_json().encode())
    for name in sorted(listing):
        info = listing[name]
        stamp = info.get("ETag") or info.get("mtime") or info.get("LastModified") or ""
        digest.update(f"{name}\0{info.get('size')}\0{stamp}\n".encode())
    return digest.hexdigest()


_NOT_TRANSIENT = (SourceError, FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError)
_TRANSIENT_NAMES = frozenset({
    # botocore / aiohttp / httpx connection and timeout errors (not all of them are OSErrors)
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "ClientConnectorError", "ServerDisconnectedError", "ClientOSError", "ServerTimeoutError",
    "ConnectError", "ReadTimeout", "ConnectTimeout", "RemoteProtocolError",
})


def is_transient_read_error(error: BaseException) -> bool:
    """Whether reading a source failed in a way that can pass (network, timeout, a 5xx), so that a
    retry may succeed. A location that does not exist, denied access and bad data are not."""
    for current in (error, error.__cause__, error.__context__):
        if current is None:
            continue
        if isinstance(current, _NOT_TRANSIENT):
            return False
        if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(current).__mro__):
            return True
        if isinstance(current, (ConnectionError, TimeoutError)):
            return True
        if isinstance(current, OSError) and current.errno in (errno.EIO, errno.EAGAIN, errno.ECONNRESET,
                                                            errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EHOSTUNREACH,
                                                            errno.ENETUNREACH, None):
            return True
    return False


__all__ = [
    "EXPECTED_LAYOUTS",
    "HF_METADATA_FILES",
    "LayoutNotRecognisedError",
    "RawItem",
    "ReadLimits",
    "ReadRefused",
    "SourceError",
    "SourceFiles",
    "SourceKind",
    "SourceNotFoundError",
    "SourceSpec",
    "check_source",
    "is_transient_read_error",
    "read_image_folder",
    "read_parquet",
    "read_webdataset",
    "records_format",
    "resolve_layout",
    "safe_relative_path",
    "source_fingerprint",
    "type_phrase",
]
