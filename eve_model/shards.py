"""The dataset format every stage reads: WebDataset-style tar shards plus a manifest.

Layout of one dataset version (a local directory or an ``s3://`` prefix)::

    manifest.json              written last; a directory without it is not a dataset
    shards/shard-000000.tar    per sample: <key>.json (metadata) and optionally <key>.<ext>
    shards/shard-000001.tar    (the original encoded image bytes: jpg, png or webp)

Sample metadata (``<key>.json``, UTF-8)::

    {"key": str, "caption": str | null,
     "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", ...}] | null,
     "image_sha256": str | null, "width": int, "height": int, "source": {...},
     "caption_provenance": {...} | null, ...}

``manifest.json``::

    {"format": "eve-wds/1", "num_items": N, "dataset_hash": sha256,
     "shards": [{"name": "shards/shard-000000.tar", "sha256", "num_items", "num_bytes"}],
     "extra": {...}}

Why tar shards: DVC versions a few large files far better than millions of small ones
(docs/architecture.md), tar is streamable from S3, and WebDataset tooling reads it as is.
Tars are written deterministically (sorted members, zero mtime/uid), so the same samples
always produce the same shard hashes and hence the same ``dataset_hash``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "eve-wds/1"
MANIFEST_NAME = "manifest.json"
SHARD_DIR = "shards"
IMAGE_EXTENSIONS = ("jpg", "png", "webp")
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
MAX_KEY_CHARS = 95
"""Longest key a writer accepts: a sample's members are ``<key>.json`` and ``<key>.<ext>`` (at most 5
characters more) and a ustar member name without a directory holds at most 100 characters."""


class DatasetIntegrityError(RuntimeError):
    """A dataset is missing, malformed, or does not match the hash it was asked for."""


@dataclass
class ShardSample:
    """One sample: metadata plus optionally the original encoded image bytes."""

    key: str
    meta: dict[str, Any]
    image_bytes: bytes | None = None
    image_ext: str | None = None

    @property
    def caption(self) -> str | None:
        return self.meta.get("caption")

    @property
    def conversations(self) -> list[dict[str, str]] | None:
        return self.meta.get("conversations")


@dataclass(frozen=True)
class ShardInfo:
    name: str
    sha256: str
    num_items: int
    num_bytes: int


@dataclass
class DatasetManifest:
    shards: list[ShardInfo]
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    @property
    def num_items(self) -> int:
        return sum(shard.num_items for shard in self.shards)

    @property
    def dataset_hash(self) -> str:
        """Content address of the version: sha256 over the canonical shard list.

        ``extra`` is deliberately excluded: descriptive fields must not change identity.
        """
        canonical = json.dumps(
            [[s.name, s.sha256, s.num_items] for s in self.shards], separators=(",", ":")
        )
        return hashlib.sha256(f"{FORMAT}|{canonical}".encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "num_items": self.num_items,
            "dataset_hash": self.dataset_hash,
            "shards": [vars(s) for s in self.shards],
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any], origin: str = "manifest") -> "DatasetManifest":
        if payload.get("format") != FORMAT:
            raise DatasetIntegrityError(
                f"{origin}: unsupported dataset format {payload.get('format')!r}; expected {FORMAT!r}"
            )
        try:
            shards = [ShardInfo(**shard) for shard in payload["shards"]]
        except (KeyError, TypeError) as exc:
            raise DatasetIntegrityError(f"{origin}: malformed shard list ({exc})") from exc
        manifest = cls(shards=shards, extra=payload.get("extra") or {})
        recorded = payload.get("dataset_hash")
        if recorded != manifest.dataset_hash:
            raise DatasetIntegrityError(
                f"{origin}: recorded dataset_hash {recorded} does not match its shard list "
                f"({manifest.dataset_hash}); the manifest was edited or truncated"
            )
        return manifest


_BLOCK_BYTES = 512
_RECORD_BYTES = 20 * _BLOCK_BYTES  # tarfile's record: an archive is padded to a multiple of it
_HEADER_TEMPLATE = bytearray(_BLOCK_BYTES)
_HEADER_TEMPLATE[100:108] = b"0000644\x00"  # mode
_HEADER_TEMPLATE[108:116] = b"0000000\x00"  # uid
_HEADER_TEMPLATE[116:124] = b"0000000\x00"  # gid
_HEADER_TEMPLATE[136:148] = b"00000000000\x00"  # mtime 0
_HEADER_TEMPLATE[148:156] = b" " * 8  # the checksum counts its own field as spaces
_HEADER_TEMPLATE[156:157] = b"0"  # a regular file
_HEADER_TEMPLATE[257:265] = b"ustar\x0000"  # POSIX magic and version; user, group, devices, prefix: NUL


def _ustar_header(name: str, size: int) -> bytes:
    """The header Python's ``tarfile`` writes (``USTAR_FORMAT``) for a regular file named ``name`` of
    ``size`` bytes, mode 0644, owner 0, no user or group name, mtime 0: byte for byte the same, so a
    shard's hash does not depend on which of the two wrote it (tests compare them), built in a few
    slice assignments instead of tarfile's per-member object copies and field encoders."""
    encoded = name.encode("ascii")
    if len(encoded) > 100:
        raise ValueError(f"member name {name!r} is longer than the 100 characters of a ustar name")
    if size >= 8**11:
        raise ValueError(f"member {name!r} is {size} bytes, over the ustar limit of 8 GiB")
    header = bytearray(_HEADER_TEMPLATE)
    header[0 : len(encoded)] = encoded
    header[124:136] = b"%011o\x00" % size
    header[148:155] = b"%06o\x00" % sum(header)
    return bytes(header)


def _shard_parts(samples: Iterable["ShardSample"]) -> Iterator[bytes]:
    """The bytes of one deterministic tar shard, in pieces: per sample ``<key>.json`` then the image,
    each member padded to 512 bytes, then two zero blocks and padding to a whole record."""
    offset = 0
    for sample in samples:
        meta = dict(sample.meta)
        meta["key"] = sample.key
        members = [(f"{sample.key}.json", json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"))]
        if sample.image_bytes is not None:
            members.append((f"{sample.key}.{sample.image_ext}", sample.image_bytes))
        for name, payload in members:
            padding = -len(payload) % _BLOCK_BYTES
            yield _ustar_header(name, len(payload))
            yield payload
            if padding:
                yield bytes(padding)
            offset += _BLOCK_BYTES + len(payload) + padding
    offset += 2 * _BLOCK_BYTES
    yield bytes(2 * _BLOCK_BYTES + (-offset % _RECORD_BYTES))


class ShardWriter:
    """Writes samples into deterministic tar shards; the manifest is written on close.

    Shards are written as ``*.tar.partial`` and renamed when complete, and the manifest is
    written through a temporary file and ``os.replace``: an interrupted writer leaves no
    manifest, so the directory is never mistaken for a dataset.
    """

    def __init__(
        self,
        out_dir: str | Path,
        max_items_per_shard: int = 500,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if max_items_per_shard < 1:
            raise ValueError("max_items_per_shard must be >= 1")
        self.out_dir = Path(out_dir)
        if (self.out_dir / MANIFEST_NAME).exists():
            raise DatasetIntegrityError(f"{self.out_dir} already holds a dataset; refusing to overwrite")
        (self.out_dir / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        self.max_items_per_shard = max_items_per_shard
        self.extra = dict(extra or {})
        self._pending: list[ShardSample] = []
        self._shards: list[ShardInfo] = []
        self._seen_keys: set[str] = set()
        self.manifest: DatasetManifest | None = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()

    def write(self, sample: ShardSample) -> None:
        if not _KEY_PATTERN.match(sample.key) or len(sample.key) > MAX_KEY_CHARS:
            raise ValueError(f"sample key {sample.key!r} must match {_KEY_PATTERN.pattern} and have at most {MAX_KEY_CHARS} characters")
        if sample.key in self._seen_keys:
            raise ValueError(f"duplicate sample key {sample.key!r}")
        if (sample.image_bytes is None) != (sample.image_ext is None):
            raise ValueError(f"sample {sample.key}: image_bytes and image_ext go together")
        if sample.image_ext is not None and sample.image_ext not in IMAGE_EXTENSIONS:
            raise ValueError(f"sample {sample.key}: image_ext must be one of {IMAGE_EXTENSIONS}")
        self._seen_keys.add(sample.key)
        self._pending.append(sample)
        if len(self._pending) >= self.max_items_per_shard:
            self._flush()

    def write_all(self, samples: Iterable[ShardSample]) -> None:
        for sample in samples:
            self.write(sample)

    def _flush(self) -> None:
        if not self._pending:
            return
        index = len(self._shards)
        name = f"{SHARD_DIR}/shard-{index:06d}.tar"
        final_path = self.out_dir / name
        partial_path = final_path.with_suffix(".tar.partial")
        digest, num_bytes = hashlib.sha256(), 0
        with open(partial_path, "wb") as handle:  # streamed: the shard is never held whole in memory
            for part in _shard_parts(self._pending):
                handle.write(part)
                digest.update(part)
                num_bytes += len(part)
        os.replace(partial_path, final_path)
        self._shards.append(
            ShardInfo(
                name=name,
                sha256=digest.hexdigest(),
                num_items=len(self._pending),
                num_bytes=num_bytes,
            )
        )
        self._pending = []

    def close(self) -> DatasetManifest:
        if self.manifest is not None:
            return self.manifest
        self._flush()
        manifest = DatasetManifest(shards=list(self._shards), extra=self.extra)
        tmp = self.out_dir / f".{MANIFEST_NAME}.tmp"
        tmp.write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=True))
        os.replace(tmp, self.out_dir / MANIFEST_NAME)
        self.manifest = manifest
        return manifest


def _open(location: str | Path, relative: str, mode: str = "rb"):
    """Open a file of a dataset, local or remote (any fsspec URL, e.g. s3://)."""
    location = str(location)
    if "://" in location:
        import fsspec  # only remote datasets pay for the import

        return fsspec.open(f"{location.rstrip('/')}/{relative}", mode).open()
    return open(Path(location) / relative, mode)


def read_manifest(location: str | Path) -> DatasetManifest:
    origin = f"{location}/{MANIFEST_NAME}"
    try:
        with _open(location, MANIFEST_NAME) as handle:
            payload = json.loads(handle.read().decode("utf-8"))
    except FileNotFoundError as exc:
        raise DatasetIntegrityError(
            f"no dataset at {location}: {MANIFEST_NAME} is missing (an interrupted write, or a wrong path)"
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetIntegrityError(f"{origin} is not valid JSON: {exc}") from exc
    return DatasetManifest.from_json(payload, origin=origin)


def _iter_tar(data: bytes, origin: str) -> Iterator[ShardSample]:
    current: ShardSample | None = None
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                raise DatasetIntegrityError(f"{origin}: unexpected non-file member {member.name!r}")
            key, _, ext = member.name.partition(".")
            if not _KEY_PATTERN.match(key) or "/" in member.name:
                raise DatasetIntegrityError(f"{origin}: invalid member name {member.name!r}")
            payload = tar.extractfile(member).read()
            if ext == "json":
                if current is not None:
                    yield current
                current = ShardSample(key=key, meta=json.loads(payload.decode("utf-8")))
            elif ext in IMAGE_EXTENSIONS and current is not None and current.key == key:
                current.image_bytes, current.image_ext = payload, ext
            else:
                raise DatasetIntegrityError(f"{origin}: member {member.name!r} has no metadata before it")
    if current is not None:
        yield current


def read_shard(location: str | Path, shard: ShardInfo, verify: bool = True) -> list[ShardSample]:
    """All samples of one shard, checking its hash against the manifest when ``verify``."""
    with _open(location, shard.name) as handle:
        data = handle.read()
    if verify and hashlib.sha256(data).hexdigest() != shard.sha256:
        raise DatasetIntegrityError(
            f"{location}/{shard.name}: content hash does not match the manifest (corrupt or replaced shard)"
        )
    return list(_iter_tar(data, f"{location}/{shard.name}"))


def iter_samples(
    location: str | Path,
    shard_names: Iterable[str] | None = None,
    manifest: DatasetManifest | None = None,
    verify: bool = True,
) -> Iterator[ShardSample]:
    """Samples of a dataset in manifest order (optionally only the named shards)."""
    manifest = manifest or read_manifest(location)
    wanted = set(shard_names) if shard_names is not None else None
    for shard in manifest.shards:
        if wanted is None or shard.name in wanted:
            yield from read_shard(location, shard, verify=verify)


def write_subset(
    location: str | Path,
    manifest: DatasetManifest,
    output_dir: str | Path,
    keep: Callable[[str], bool],
    extra: dict[str, Any],
    max_items_per_shard: int = 500,
) -> DatasetManifest:
    """A new dataset version of the samples of ``location`` whose key ``keep`` accepts, unchanged and in
    manifest order (how curation and the quality gates derive their outputs); returns its manifest."""
    with ShardWriter(output_dir, max_items_per_shard=max_items_per_shard, extra=extra) as writer:
        for sample in iter_samples(location, manifest=manifest):
            if keep(sample.key):
                writer.write(sample)
    return writer.manifest


def verify_dataset(
    location: str | Path, expected_hash: str | None = None, check_shards: bool = True
) -> DatasetManifest:
    """Read and check a dataset: manifest hash, expected hash, and (optionally) every shard."""
    manifest = read_manifest(location)
    if expected_hash is not None and manifest.dataset_hash != expected_hash:
        raise DatasetIntegrityError(
            f"dataset at {location} has hash {manifest.dataset_hash}, but {expected_hash} was expected: "
            "the data changed since the run was configured"
        )
    if check_shards:
        for shard in manifest.shards:
            with _open(location, shard.name) as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()
            if digest != shard.sha256:
                raise DatasetIntegrityError(
                    f"{location}/{shard.name}: content hash {digest} does not match the manifest's {shard.sha256}"
                )
    return manifest


__all__ = [
    "FORMAT",
    "DatasetIntegrityError",
    "DatasetManifest",
    "ShardInfo",
    "ShardSample",
    "ShardWriter",
    "iter_samples",
    "read_manifest",
    "read_shard",
    "verify_dataset",
    "write_subset",
]
