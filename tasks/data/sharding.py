"""Ingest: stream raw items through validation into tar shards plus a quarantine list.

One pass, bounded memory: each item is validated and either handed to
``eve_model.shards.ShardWriter`` or appended to ``quarantine.jsonl`` with its one reason. The
output directory is a complete dataset version only once ``manifest.json`` exists (ShardWriter
writes it last); the quarantine list and ``ingest_report.json`` sit next to it, outside the shard
list, so they document the version without changing its ``dataset_hash``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from pydantic import BaseModel, Field

from eve_model.shards import MAX_KEY_CHARS, ShardSample, ShardWriter
from tasks.data.sources import RawItem
from tasks.data.validate import Quarantined, ValidationConfig, validate_item

QUARANTINE_FILE = "quarantine.jsonl"
REPORT_FILE = "ingest_report.json"


class IngestReport(BaseModel):
    """What one ingest did; ``num_in == num_accepted + num_quarantined`` always holds."""

    dataset_dir: str
    """Directory of the written dataset version (manifest.json + shards/)."""

    dataset_hash: str
    """The manifest's content address (sha256 over the shard list)."""

    num_in: int
    """Items the readers produced, bad ones included."""

    num_accepted: int
    """Items written to shards."""

    num_quarantined: int
    """Items written to the quarantine list."""

    quarantined_by_reason: dict[str, int] = Field(default_factory=dict)
    """Quarantine count per reason (values of ``QuarantineReason``)."""

    num_converted_to_rgb: int = 0
    """Accepted items whose colour mode was converted (re-encoded as PNG)."""

    num_shards: int = 0
    shard_bytes: int = 0
    """Total bytes of the shard files."""

    quarantine_path: str = ""
    """JSONL, one record per quarantined item: item_id, source_uri, reason, detail."""

    source_content_sha256: str = ""
    """The raw sources' own content hash, as read: sha256 over one line per item the readers produced
    (quarantined ones included), in reading order (readers list files sorted): item id, sha256 of the
    image bytes, the caption and the other record fields as canonical JSON. No path, host or time, so
    the same source files give the same hash wherever they lie; lineage records it as the raw source's
    hash where DVC does not track the source. "" in reports written before it existed."""

    elapsed_seconds: float = 0.0

    @property
    def reconciles(self) -> bool:
        return (
            self.num_in == self.num_accepted + self.num_quarantined
            and self.num_quarantined == sum(self.quarantined_by_reason.values())
        )

    def table_rows(self) -> list[dict[str, object]]:
        """Rows for a Prefect table artifact: totals first, then one row per quarantine reason."""
        rows: list[dict[str, object]] = [
            {"outcome": "in", "count": self.num_in},
            {"outcome": "accepted", "count": self.num_accepted},
            {"outcome": "quarantined", "count": self.num_quarantined},
        ]
        rows += [{"outcome": f"quarantined: {reason}", "count": count} for reason, count in sorted(self.quarantined_by_reason.items())]
        return rows


def source_item_line(item: RawItem) -> bytes:
    """One item's line of ``IngestReport.source_content_sha256``."""
    image = item.image_sha256() or "-"  # the same digest validation records (hashed once per item)
    caption = item.caption.hex() if isinstance(item.caption, bytes) else item.caption
    fields = json.dumps([item.item_id, image, caption, item.extra, item.reader_problem], sort_keys=True,
                        ensure_ascii=False, separators=(",", ":"), default=repr)
    return fields.encode("utf-8", errors="surrogatepass") + b"\n"


def _unique_key(key: str, seen: set[str], source_uri: str) -> str:
    """``key``, or a deterministic variant of it that is not in ``seen`` yet.

    Two sources may reuse an id, and one tar may repeat a WebDataset key: the item's source URI
    (which readers make unique: a repeated tar key carries its occurrence) disambiguates, so the
    same input always gets the same keys and nothing is dropped."""
    if key not in seen:
        return key
    uri_bytes = source_uri.encode("utf-8", errors="surrogatepass")
    for attempt in itertools.count():
        salt = b"" if attempt == 0 else f"\0{attempt}".encode()
        candidate = f"{key[: MAX_KEY_CHARS - 13]}-{hashlib.sha256(uri_bytes + salt).hexdigest()[:12]}"
        if candidate not in seen:
            return candidate
    raise AssertionError("unreachable")  # pragma: no cover


AcceptedItem = tuple[str, ShardSample]
"""An accepted item on its way to the shards: ``(source_uri, sample)``; the URI disambiguates a repeated key."""

QuarantineRecord = dict[str, str]
"""A quarantined item's line of ``quarantine.jsonl`` (``Quarantined.to_json()``: item_id, source_uri, reason, detail)."""


def ingest_items(
    items: Iterable[RawItem],
    out_dir: str | Path,
    config: ValidationConfig,
    max_items_per_shard: int = 500,
    extra: dict | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    progress_every_items: int = 500,
    published_dir: str | Path | None = None,
) -> IngestReport:
    """Validate ``items`` and write accepted ones as shards under ``out_dir``.

    ``progress(num_in, num_accepted, num_quarantined)`` is called every ``progress_every_items``
    items and at the end. ``out_dir`` must not already hold a dataset. ``published_dir``: where
    ``out_dir`` (a private folder, ``tasks.publish``) will be renamed to; the report names that place.
    """
    source_content = hashlib.sha256()

    def judged() -> Iterator[AcceptedItem | QuarantineRecord]:
        for item in items:
            source_content.update(source_item_line(item))
            outcome = validate_item(item, config)
            yield outcome.to_json() if isinstance(outcome, Quarantined) else (item.source_uri, outcome)

    return write_judged_items(judged(), out_dir, config, source_content.hexdigest, max_items_per_shard, extra,
                              progress, progress_every_items, published_dir)


def write_judged_items(
    judged: Iterable[AcceptedItem | QuarantineRecord],
    out_dir: str | Path,
    config: ValidationConfig,
    source_content_sha256: Callable[[], str],
    max_items_per_shard: int = 500,
    extra: dict | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    progress_every_items: int = 500,
    published_dir: str | Path | None = None,
) -> IngestReport:
    """Write already validated items, in reading order, as one dataset version with its quarantine list
    and report: the one write path of every ingest, in-process (``ingest_items``) or merged from shards
    validated on workers (``tasks.data.shard_ingest``), so both give the same bytes for the same input.

    ``source_content_sha256`` is asked once every item was consumed (the caller hashes as it reads)."""
    started = time.monotonic()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reasons: Counter[str] = Counter()
    seen_keys: set[str] = set()
    num_in = num_accepted = num_converted = 0
    quarantine_path = out_dir / QUARANTINE_FILE
    with open(quarantine_path, "w", encoding="utf-8") as quarantine, ShardWriter(
        out_dir, max_items_per_shard=max_items_per_shard, extra={"validation": config.model_dump(), **(extra or {})}
    ) as writer:
        for outcome in judged:
            num_in += 1
            if isinstance(outcome, dict):
                reasons[outcome["reason"]] += 1
                quarantine.write(json.dumps(outcome, ensure_ascii=False) + "\n")
            else:
                source_uri, sample = outcome
                sample.key = _unique_key(sample.key, seen_keys, source_uri)
                seen_keys.add(sample.key)
                writer.write(sample)
                num_accepted += 1
                num_converted += bool(sample.meta["source"]["converted_to_rgb"])
            if progress is not None and num_in % progress_every_items == 0:
                progress(num_in, num_accepted, sum(reasons.values()))
    manifest = writer.manifest
    if progress is not None:
        progress(num_in, num_accepted, sum(reasons.values()))
    recorded_dir = Path(published_dir) if published_dir is not None else out_dir
    report = IngestReport(
        dataset_dir=str(recorded_dir),
        dataset_hash=manifest.dataset_hash,
        num_in=num_in,
        num_accepted=num_accepted,
        num_quarantined=sum(reasons.values()),
        quarantined_by_reason=dict(sorted(reasons.items())),
        num_converted_to_rgb=num_converted,
        num_shards=len(manifest.shards),
        shard_bytes=sum(s.num_bytes for s in manifest.shards),
        quarantine_path=str(recorded_dir / QUARANTINE_FILE),
        source_content_sha256=source_content_sha256(),
        elapsed_seconds=round(time.monotonic() - started, 3),
    )
    if not report.reconciles:  # pragma: no cover - a bug in this module, never bad input
        raise AssertionError(f"ingest counts do not reconcile: {report}")
    # elapsed time stays out of the file so identical ingests give identical version directories
    (out_dir / REPORT_FILE).write_text(report.model_dump_json(indent=2, exclude={"elapsed_seconds"}))
    return report
