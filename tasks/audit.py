"""Append-only, hash-chained audit log of promotion requests, review decisions and stage moves.

Prefect OSS has no identity or audit trail (docs/security.md), so the platform keeps its own: one JSON
object per line in ``<EVE_HOME>/audit/audit.jsonl``. Each record carries the hash of the previous
record and the sha256 of its own canonical JSON, so editing, deleting or reordering any line breaks
the chain; a head file (``audit.head.json``: last sequence number and hash) also catches a cut-off
tail. ``eve audit verify`` runs :func:`verify_audit_log`.

    from tasks.audit import AuditLog
    log = AuditLog.default()
    record = log.append("promotion.requested", actor="alice", subject="eve@v0.2.0", payload={...})
    assert log.verify().ok
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from tasks.platform import PlatformSettings

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first record."""

# Event names, one per kind of thing an auditor asks about.
PROMOTION_REQUESTED = "promotion.requested"
REVIEW_DECISION_ACCEPTED = "review.decision_accepted"
REVIEW_DECISION_REFUSED = "review.decision_refused"
REVIEW_TIMED_OUT = "review.timed_out"
PROMOTION_REJECTED = "promotion.rejected"
CANDIDATE_REGISTERED = "registry.candidate_registered"
PRODUCTION_ASSIGNED = "registry.production_assigned"

_SECRET_KEY_PATTERN = re.compile(r"(token|secret|password|passwd|api[_-]?key|credential|access[_-]?key)", re.I)
REDACTED = "***redacted***"


def canonical_json(payload: Any) -> str:
    """The one serialisation that hashes are taken over: sorted keys, no whitespace, UTF-8."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def redact_secrets(payload: Any) -> Any:
    """A copy of ``payload`` with the value of every secret-looking key replaced (secrets never reach the log)."""
    if isinstance(payload, dict):
        return {
            key: REDACTED if _SECRET_KEY_PATTERN.search(str(key)) else redact_secrets(value)
            for key, value in payload.items()
        }
    if isinstance(payload, list | tuple):
        return [redact_secrets(value) for value in payload]
    return payload


class AuditRecord(BaseModel):
    """One line of the audit log."""

    seq: int
    """Position in the log, starting at 0; a gap means a deleted record."""

    recorded_at: str
    """UTC time of the append, ISO 8601."""

    event: str
    """What happened, e.g. ``review.decision_refused`` (constants in this module)."""

    actor: str | None = None
    """Who caused it (requester, reviewer, or ``platform`` for automatic steps)."""

    subject: str | None = None
    """What it is about, e.g. ``eve@v0.2.0``."""

    payload: dict[str, Any] = Field(default_factory=dict)
    """Event details (secrets redacted)."""

    prev_hash: str
    """``record_hash`` of the previous record (``GENESIS_HASH`` for the first)."""

    record_hash: str = ""
    """sha256 of the canonical JSON of every other field."""

    def compute_hash(self) -> str:
        return sha256_text(canonical_json(self.model_dump(exclude={"record_hash"})))


class AuditVerification(BaseModel):
    """Outcome of checking the chain."""

    ok: bool
    """True when every record hashes correctly, links to its predecessor, and the head matches."""

    num_records: int
    """Records read from the log (including broken ones)."""

    problems: list[str] = Field(default_factory=list)
    """One line per defect found, naming the line number and what is wrong."""

    head_hash: str | None = None
    """Hash of the last record, as read."""


class AuditLog:
    """The append-only log at ``path``; appends are serialised across threads and processes by a file lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.stem + ".head.json")
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    @classmethod
    def default(cls, settings: PlatformSettings | None = None) -> "AuditLog":
        settings = settings or PlatformSettings.load()
        return cls(settings.path("audit") / "audit.jsonl")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def append(
        self,
        event: str,
        *,
        actor: str | None = None,
        subject: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> AuditRecord:
        """Append one record linked to the current head and return it (with its hash)."""
        with self._locked():
            last = self._last_record()
            record = AuditRecord(
                seq=0 if last is None else last.seq + 1,
                recorded_at=datetime.now(timezone.utc).isoformat(),
                event=event,
                actor=actor,
                subject=subject,
                payload=redact_secrets(json.loads(canonical_json(payload or {}))),
                prev_hash=GENESIS_HASH if last is None else last.record_hash,
            )
            record.record_hash = record.compute_hash()
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(canonical_json(record.model_dump()) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            self._write_head(record)
            return record

    def _last_record(self) -> AuditRecord | None:
        if not self.path.exists():
            return None
        last_line = ""
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    last_line = line
        return AuditRecord.model_validate_json(last_line) if last_line else None

    def _write_head(self, record: AuditRecord) -> None:
        temporary = self.head_path.with_suffix(".tmp")
        temporary.write_text(canonical_json({"seq": record.seq, "record_hash": record.record_hash}))
        os.replace(temporary, self.head_path)

    def records(self) -> list[AuditRecord]:
        """Every record in file order (raises on a line that is not a record; use ``verify`` to diagnose)."""
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [AuditRecord.model_validate_json(line) for line in lines if line.strip()]

    def find(self, record_hash: str) -> AuditRecord | None:
        return next((r for r in self.records() if r.record_hash == record_hash), None)

    def verify(self) -> AuditVerification:
        return verify_audit_log(self.path, self.head_path)


def verify_audit_log(path: Path, head_path: Path | None = None) -> AuditVerification:
    """Check every record's own hash, its link to the previous one, its sequence number, and the head file.

    An edited record fails its own hash; a deleted or moved record breaks the link and the sequence;
    a cut-off tail disagrees with the head file.
    """
    path = Path(path)
    head_path = head_path or path.with_name(path.stem + ".head.json")
    problems: list[str] = []
    if not path.exists():
        if head_path.exists():
            problems.append(f"{path} is missing but the head file {head_path} says records were written")
        return AuditVerification(ok=not problems, num_records=0, problems=problems)

    expected_prev = GENESIS_HASH
    expected_seq = 0
    num_records = 0
    last_hash: str | None = None
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            problems.append(f"line {line_number}: blank line inside the log")
            continue
        num_records += 1
        try:
            record = AuditRecord.model_validate_json(line)
        except ValueError as error:
            problems.append(f"line {line_number}: not an audit record ({str(error).splitlines()[0]})")
            expected_prev, expected_seq, last_hash = "", expected_seq + 1, None
            continue
        if record.compute_hash() != record.record_hash:
            problems.append(f"line {line_number} (seq {record.seq}): content does not match its hash (edited)")
        if record.seq != expected_seq:
            problems.append(
                f"line {line_number}: sequence number {record.seq}, expected {expected_seq} (deleted or reordered)"
            )
        if record.prev_hash != expected_prev:
            problems.append(
                f"line {line_number} (seq {record.seq}): previous-record hash does not match the record before it "
                "(deleted, inserted or reordered)"
            )
        expected_prev, expected_seq, last_hash = record.record_hash, record.seq + 1, record.record_hash

    if head_path.exists():
        head = json.loads(head_path.read_text())
        if head.get("record_hash") != last_hash or head.get("seq") != expected_seq - 1:
            problems.append(
                f"head file says the last record is seq {head.get('seq')} {head.get('record_hash')}, "
                f"the log ends at seq {expected_seq - 1} {last_hash} (records cut off or appended around the lock)"
            )
    elif num_records:
        problems.append(f"head file {head_path} is missing")
    return AuditVerification(ok=not problems, num_records=num_records, problems=problems, head_hash=last_hash)


__all__ = [
    "AuditLog",
    "AuditRecord",
    "AuditVerification",
    "canonical_json",
    "redact_secrets",
    "sha256_text",
    "verify_audit_log",
]
