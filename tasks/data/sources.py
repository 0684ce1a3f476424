"""Readers of raw image-text sources: image folders with a captions file, WebDataset tars, Parquet.

Every reader yields ``RawItem``s lazily (one image in memory at a time) from a local path or any
fsspec URL (``s3://bucket/prefix`` via s3fs). Readers never decide what is good data; they only
report what they found. Anything a reader cannot turn into an item (a record that is not JSON, a
member name that tries to leave the folder, an image file that is missing) still comes out as a
``RawItem`` with ``reader_problem`` set, so validation quarantines it with a reason and the counts
reconcile. Nothing is ever extracted to disk, so a hostile member name cannot write anywhere.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import posixpath
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
CAPTION_SUFFIXES = ("txt", "caption")


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

    caption: str | bytes | None = None
    """Caption text; ``bytes`` when the reader could not decode it as UTF-8 (validation decides)."""

    extra: dict[str, Any] = field(default_factory=dict)
    """Other record fields (e.g. ``true_caption``, ``conversations``), carried into the sample metadata."""

    reader_problem: tuple[str, str] | None = None
    """``(reason, detail)`` if the reader could not produce a usable item (always quarantined)."""

    source_root: str = ""
    """URI of the source location the reader was given (folder, tar folder, parquet folder)."""

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


def _decode_text(raw: bytes) -> str | bytes:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _records_from_jsonl(data: bytes, uri: str) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    for line_number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            # surrogateescape keeps non-UTF-8 caption bytes recoverable instead of failing the record
            yield line_number, json.loads(line.decode("utf-8", errors="surrogateescape")), ""
        except json.JSONDecodeError as exc:
            yield line_number, None, f"{uri}:{line_number}: not a JSON object ({exc.msg})"


def _records_from_csv(data: bytes, uri: str) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    text = data.decode("utf-8", errors="surrogateescape")
    for line_number, row in enumerate(csv.DictReader(io.StringIO(text, newline="")), start=2):
        yield line_number, dict(row), ""


def _restore_bytes(value: Any) -> str | bytes | None:
    """Undo surrogateescape: a caption that was not UTF-8 comes back as its original bytes."""
    if value is None or not isinstance(value, str):
        return value if value is None else str(value)
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", errors="surrogateescape")


def _rooted(items: Iterator[RawItem], root_uri: str) -> Iterator[RawItem]:
    for item in items:
        item.source_root = root_uri
        yield item


def read_image_folder(
    location: str,
    records_file: str = "captions.jsonl",
    image_field: str = "image",
    caption_field: str = "caption",
    id_field: str = "id",
) -> Iterator[RawItem]:
    """Items of an image folder described by a records file (JSONL or CSV, by extension).

    Each record names its image relative to the folder (``image_field``); a name that would leave
    the folder is reported as ``unsafe_path``, a missing file as ``missing_image``. Extra record
    fields (e.g. ``conversations``, ``true_caption``) are carried along in ``RawItem.extra``.
    """
    fs, root = _fs_and_path(location)
    return _rooted(_read_image_folder(fs, root, location, records_file, image_field, caption_field, id_field), fs.unstrip_protocol(root))


def _read_image_folder(
    fs,
    root: str,
    location: str,
    records_file: str = "captions.jsonl",
    image_field: str = "image",
    caption_field: str = "caption",
    id_field: str = "id",
) -> Iterator[RawItem]:
    records_uri = _join(root, records_file)
    with fs.open(records_uri, "rb") as handle:
        data = handle.read()
    parse = _records_from_csv if records_file.endswith(".csv") else _records_from_jsonl
    for line_number, record, problem in parse(data, records_uri):
        record_uri = f"{fs.unstrip_protocol(records_uri)}#L{line_number}"
        if record is None or not isinstance(record, dict):
            yield RawItem(
                item_id=f"line-{line_number}",
                source_uri=record_uri,
                reader_problem=("bad_record", problem or f"{record_uri}: record is not an object"),
            )
            continue
        image_name = str(record.get(image_field) or "")
        item_id = str(record.get(id_field) or posixpath.splitext(posixpath.basename(image_name))[0] or f"line-{line_number}")
        extra = {k: v for k, v in record.items() if k not in (image_field, caption_field, id_field)}
        item = RawItem(
            item_id=item_id,
            source_uri=record_uri,
            image_name=image_name,
            caption=_restore_bytes(record.get(caption_field)),
            extra=extra,
        )
        relative = safe_relative_path(image_name)
        if relative is None:
            item.reader_problem = ("unsafe_path", f"image path {image_name!r} leaves the folder {location}")
            yield item
            continue
        image_uri = _join(root, relative)
        try:
            with fs.open(image_uri, "rb") as image_handle:
                item.image_bytes = image_handle.read()
        except (FileNotFoundError, IsADirectoryError) as exc:
            item.reader_problem = ("missing_image", f"{image_uri}: {exc.__class__.__name__}")
        item.source_uri = f"{fs.unstrip_protocol(image_uri)} ({record_uri})"
        yield item


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


def _item_from_group(key: str, members: dict[str, bytes], uri: str) -> RawItem:
    item = RawItem(item_id=posixpath.basename(key), source_uri=f"{uri}#{key}")
    for suffix, payload in members.items():
        if suffix in IMAGE_SUFFIXES and item.image_bytes is None:
            item.image_bytes, item.image_name = payload, f"{key}.{suffix}"
        elif suffix in CAPTION_SUFFIXES:
            item.caption = _decode_text(payload)
        elif suffix == "json":
            try:
                record = json.loads(payload.decode("utf-8", errors="surrogateescape"))
            except json.JSONDecodeError as exc:
                item.reader_problem = ("bad_record", f"{uri}#{key}.json: not JSON ({exc.msg})")
                continue
            if isinstance(record, dict):
                if item.caption is None and "caption" in record:
                    item.caption = _restore_bytes(record.pop("caption"))
                item.extra.update({k: v for k, v in record.items() if k != "key"})
    if item.image_bytes is None and item.reader_problem is None:
        item.reader_problem = ("missing_image", f"{uri}#{key}: no image member ({sorted(members)})")
    return item


def read_webdataset(location: str) -> Iterator[RawItem]:
    """Items of one WebDataset tar, or of every ``*.tar`` under a folder/prefix (sorted).

    Members are streamed and grouped by key; a member whose name is absolute, contains ``..``,
    or is a link/device becomes its own ``unsafe_member`` item and is never extracted.
    """
    fs, root = _fs_and_path(location)
    if root.endswith(".tar"):
        tar_paths, root_uri = [root], fs.unstrip_protocol(posixpath.dirname(root))
    else:
        tar_paths, root_uri = sorted(p for p in fs.find(root) if p.endswith(".tar")), fs.unstrip_protocol(root)
    return _rooted(_read_tars(fs, tar_paths), root_uri)


def _unreadable_rest(uri: str, produced: int, exc: BaseException) -> RawItem:
    """One quarantine item standing for the unreadable remainder of a corrupt or truncated file."""
    return RawItem(
        item_id=posixpath.basename(uri.split("://", 1)[-1]) or "source",
        source_uri=f"{uri}#after-item-{produced}",
        reader_problem=(
            "unreadable_source",
            f"{uri}: unreadable after {produced} item(s) ({exc.__class__.__name__}: {exc}); the rest of the file is quarantined",
        ),
    )


def _read_tars(fs, tar_paths: list[str]) -> Iterator[RawItem]:
    for tar_path in tar_paths:
        uri = fs.unstrip_protocol(tar_path)
        produced = 0
        try:
            for item in _read_one_tar(fs, tar_path, uri):
                produced += 1
                yield item
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            # a corrupt or truncated archive; network errors (OSError) propagate so the task retries
            yield _unreadable_rest(uri, produced, exc)


def _read_one_tar(fs, tar_path: str, uri: str) -> Iterator[RawItem]:
    with fs.open(tar_path, "rb") as handle, tarfile.open(fileobj=handle, mode="r|*") as tar:
        current_key: str | None = None
        group: dict[str, bytes] = {}
        for member in tar:
            problem = _unsafe_member_reason(member)
            if problem is not None:
                if group:  # keep source order: the pending sample came first
                    yield _item_from_group(current_key, group, uri)
                    group, current_key = {}, None
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
            if key != current_key and group:
                yield _item_from_group(current_key, group, uri)
                group = {}
            current_key = key
            extracted = tar.extractfile(member)
            group[suffix] = extracted.read() if extracted is not None else b""
        if group and current_key is not None:
            yield _item_from_group(current_key, group, uri)


def read_parquet(
    location: str,
    image_column: str = "image",
    caption_column: str = "caption",
    id_column: str | None = "id",
    batch_size_rows: int = 64,
) -> Iterator[RawItem]:
    """Items of a Parquet file (image bytes + caption per row), read in small row batches.

    ``image_column`` may hold raw bytes or a HF-datasets style struct ``{"bytes", "path"}``.
    """
    fs, path = _fs_and_path(location)
    return _rooted(
        _read_parquet_rows(fs, path, image_column, caption_column, id_column, batch_size_rows),
        fs.unstrip_protocol(posixpath.dirname(path)),
    )


def _read_parquet_rows(
    fs, path: str, image_column: str, caption_column: str, id_column: str | None, batch_size_rows: int
) -> Iterator[RawItem]:

    import pyarrow as pa

    uri = fs.unstrip_protocol(path)
    produced = 0
    try:
        for item in _parquet_items(fs, path, uri, image_column, caption_column, id_column, batch_size_rows):
            produced += 1
            yield item
    except pa.ArrowException as exc:  # not a Parquet file, or a corrupt page
        yield _unreadable_rest(uri, produced, exc)


def _parquet_items(
    fs, path: str, uri: str, image_column: str, caption_column: str, id_column: str | None, batch_size_rows: int
) -> Iterator[RawItem]:
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as handle:
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
                    image_bytes=image,
                    caption=_decode_text(caption) if isinstance(caption, bytes) else caption,
                    extra=_jsonable(extra),
                )
                if image is None:
                    item.reader_problem = ("missing_image", f"{uri}#row={row_index}: column {image_column!r} is null")
                yield item
                row_index += 1


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        try:
            json.dumps(value)
            out[key] = value
        except TypeError:
            out[key] = repr(value)
    return out


class SourceSpec(BaseModel):
    """One raw source to ingest (a flow parameter: Prefect draws it as a form)."""

    kind: Literal["image_folder", "webdataset", "parquet"] = "image_folder"
    """Reader to use."""

    location: str
    """Local path or fsspec URL (``s3://bucket/prefix``)."""

    records_file: str = "captions.jsonl"
    """image_folder only: the JSONL or CSV file describing the images."""

    caption_field: str = "caption"
    """Field/column holding the caption."""

    def read(self) -> Iterator[RawItem]:
        if self.kind == "image_folder":
            return read_image_folder(self.location, records_file=self.records_file, caption_field=self.caption_field)
        if self.kind == "webdataset":
            return read_webdataset(self.location)
        return read_parquet(self.location, caption_column=self.caption_field)


def source_fingerprint(spec: SourceSpec) -> str:
    """A cheap content fingerprint of a source: sha256 over (name, size, mtime/ETag) of its files.

    Used as a cache key: a changed, added or removed file changes it, without reading the bytes.
    """
    fs, root = _fs_and_path(spec.location)
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
