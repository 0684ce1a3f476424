"""Append-only audit log of promotion requests, review decisions and registry moves (docs/security.md).

One JSON object per line in ``<EVE_HOME>/audit/audit.jsonl``. Each record carries the hash of the
previous record, the sha256 of its own canonical JSON, and the platform key's signature of that hash
(``tasks/signing.py``), so:

- editing, deleting or reordering a line breaks the chain;
- a record written by hand (or with a recomputed hash) has no valid signature;
- the head file (``audit.head.json``: last sequence number and hash, signed) catches a cut-off tail;
- a rewrite of the log together with an old signed head is caught by the anchors: the registry holds
  a signed tag with the head at every promotion (``tasks/registry.py``, ``tasks/verification.py``).

``append`` never papers over a log that disagrees with its head: it refuses, records an alert in
``audit.alerts.jsonl`` and logs it. A torn (half-written) last line is reported by ``verify`` and set
aside by ``repair`` (the explicit command ``eve audit repair``), which keeps the torn bytes as evidence
and records the repair; ``records``, ``show`` and ``verify`` never crash on it.

    from tasks.audit import AuditLog
    log = AuditLog.default()
    record = log.append("promotion.requested", actor="alice", subject="eve@v0.2.0", payload={...})
    assert log.verify().ok
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from tasks.platform import PlatformSettings
from tasks.signing import KeyRing, Signature, SignedModel, canonical_json

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first record."""
RECORD_DOMAIN = "eve-audit-record/1"
HEAD_DOMAIN = "eve-audit-head/1"
REPAIR_COMMAND = "eve audit repair"

# Event names, one per kind of thing an auditor asks about.
PROMOTION_REQUESTED = "promotion.requested"
REVIEW_DECISION_ACCEPTED = "review.decision_accepted"
REVIEW_DECISION_REFUSED = "review.decision_refused"
REVIEW_TIMED_OUT = "review.timed_out"
PROMOTION_REJECTED = "promotion.rejected"
CANDIDATE_REGISTERED = "registry.candidate_registered"
ASSIGNMENT_INTENT = "registry.assignment_intent"
PRODUCTION_ASSIGNED = "registry.production_assigned"
ASSIGNMENT_ABORTED = "registry.assignment_aborted"
POLICY_UPDATED = "policy.updated"
TORN_LINE_REPAIRED = "audit.torn_line_repaired"

_SECRET_KEY_PATTERN = re.compile(r"(token|secret|password|passwd|api[_-]?key|credential|access[_-]?key)", re.I)
REDACTED = "***redacted***"
logger = logging.getLogger("eve.audit")


class AuditIntegrityError(RuntimeError):
    """The log disagrees with its head, holds unsigned or torn records: appending would hide it."""


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
    """Who caused it: an authenticated account, or ``platform`` for automatic steps."""

    subject: str | None = None
    """What it is about, e.g. ``eve@v0.2.0``."""

    payload: dict[str, Any] = Field(default_factory=dict)
    """Event details (secrets redacted)."""

    prev_hash: str
    """``record_hash`` of the previous record (``GENESIS_HASH`` for the first)."""

    record_hash: str = ""
    """sha256 of the canonical JSON of every field but this one and the signature."""

    signature: Signature | None = None
    """The platform key's signature of ``record_hash``."""

    def compute_hash(self) -> str:
        return sha256_text(canonical_json(self.model_dump(mode="json", exclude={"record_hash", "signature"})))


class AuditHead(SignedModel):
    """The signed pointer to the last record (``audit.head.json``)."""

    seq: int
    record_hash: str


class AuditVerification(BaseModel):
    """Outcome of checking the log."""

    ok: bool
    """True when every record hashes, links, is signed, and the head matches."""

    num_records: int
    """Complete records read from the log."""

    problems: list[str] = Field(default_factory=list)
    """One line per defect, in file order, naming the line and what is wrong; the first is the first broken link."""

    notes: list[str] = Field(default_factory=list)
    """Observations that are not defects (an append interrupted before its head moved, raised alerts)."""

    head_hash: str | None = None
    """Hash of the last record, as read."""


class LogLine(BaseModel):
    """One line of the file as read: a record, or the reason it is not one."""

    line_number: int
    record: AuditRecord | None = None
    problem: str | None = None


class LogScan(BaseModel):
    """The file read without trusting it."""

    lines: list[LogLine] = Field(default_factory=list)
    torn_bytes: int = 0
    """Length of an incomplete last line (no newline): a write that did not finish."""

    torn_offset: int = 0
    """Byte offset where that line starts."""

    @property
    def records(self) -> list[AuditRecord]:
        return [line.record for line in self.lines if line.record is not None]


def scan_log(path: Path) -> LogScan:
    """Read ``path`` line by line; never raises on content."""
    if not path.exists():
        return LogScan()
    data = path.read_bytes()
    cut = len(data) if data.endswith(b"\n") else data.rfind(b"\n") + 1
    body, torn = data[:cut], data[cut:]
    scan = LogScan(torn_bytes=len(torn), torn_offset=cut)
    body_lines = body.split(b"\n")[:-1]
    for number, raw in enumerate(body_lines, start=1):
        if not raw.strip():
            scan.lines.append(LogLine(line_number=number, problem="blank line inside the log"))
            continue
        try:
            scan.lines.append(LogLine(line_number=number, record=AuditRecord.model_validate_json(raw)))
        except (ValidationError, ValueError) as error:
            reason = str(error).splitlines()[0]
            scan.lines.append(LogLine(line_number=number, problem=f"not an audit record ({reason})"))
    return scan


class AuditLog:
    """The append-only log at ``path``; appends are serialised across threads and processes by a file lock."""

    def __init__(self, path: Path, keyring: KeyRing | None = None) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_name(self.path.stem + ".head.json")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.alerts_path = self.path.with_name(self.path.stem + ".alerts.jsonl")
        self.evidence_dir = self.path.parent / "evidence"
        self.keyring = keyring or KeyRing.default()

    @classmethod
    def default(cls, settings: PlatformSettings | None = None) -> "AuditLog":
        settings = settings or PlatformSettings.load()
        return cls(settings.path("audit") / "audit.jsonl", KeyRing.default(settings))

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The log's exclusive lock (held by ``append``; callers that read-then-append hold it around both)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ writes

    def append(
        self,
        event: str,
        *,
        actor: str | None = None,
        subject: str | None = None,
        payload: dict[str, Any] | None = None,
    ) -> AuditRecord:
        """Append one signed record linked to the head and return it; refuses (and alerts) when the log
        and its head disagree, so a cut or a forged tail is never sealed over."""
        with self.locked():
            scan = scan_log(self.path)
            last = self._check_appendable(scan)
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
            record.signature = self.keyring.sign("platform", RECORD_DOMAIN, record.record_hash)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(canonical_json(record.model_dump(mode="json")) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            self._write_head(record)
            return record

    def _check_appendable(self, scan: LogScan) -> AuditRecord | None:
        """The last record to link to, or raise AuditIntegrityError (with an alert)."""
        problem = None
        if scan.torn_bytes:
            problem = (
                f"{self.path} ends in a torn line ({scan.torn_bytes} bytes without a newline): "
                f"`{REPAIR_COMMAND}` sets it aside as evidence; appends wait until then"
            )
        elif bad := next((line for line in scan.lines if line.problem), None):
            problem = f"{self.path} line {bad.line_number}: {bad.problem}"
        else:
            problem = self._head_disagreement(scan.records)
        if problem:
            self.alert(f"append refused: {problem}")
            raise AuditIntegrityError(problem)
        return scan.records[-1] if scan.records else None

    def _head_disagreement(self, records: list[AuditRecord]) -> str | None:
        head = self.head()
        if head is None:
            return f"{len(records)} records but no head file {self.head_path}" if records else None
        if not head.verify_with(self.keyring, "platform", HEAD_DOMAIN):
            return f"head file {self.head_path} is not signed by the platform key"
        by_seq = {record.seq: record for record in records}
        if head.seq not in by_seq:
            return f"the head names seq {head.seq}, the log ends at seq {records[-1].seq if records else '-'} (cut)"
        if by_seq[head.seq].record_hash != head.record_hash:
            return f"record seq {head.seq} differs from the signed head (rewritten)"
        for record in records[records.index(by_seq[head.seq]) + 1 :]:
            # Records past the head: an append interrupted between its line and its head. Only
            # platform-signed ones are accepted; anything else was written around the platform.
            if not self.record_is_authentic(record):
                return f"record seq {record.seq} after the head is not signed by the platform"
        return None

    def record_is_authentic(self, record: AuditRecord) -> bool:
        """Own hash correct and signed by a trusted platform key."""
        return record.compute_hash() == record.record_hash and self.keyring.verify(
            record.signature, "platform", RECORD_DOMAIN, record.record_hash
        )

    def _write_head(self, record: AuditRecord) -> None:
        head = AuditHead(seq=record.seq, record_hash=record.record_hash)
        head.sign_with(self.keyring, "platform", HEAD_DOMAIN)
        temporary = self.head_path.with_suffix(".tmp")
        temporary.write_text(canonical_json(head.model_dump(mode="json")))
        os.replace(temporary, self.head_path)

    def alert(self, problem: str) -> None:
        """Record that the platform refused to go on because the log looks tampered with or broken."""
        logger.error("AUDIT ALERT: %s", problem)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.alerts_path, "a", encoding="utf-8") as handle:
            handle.write(canonical_json({"at": datetime.now(timezone.utc).isoformat(), "problem": problem}) + "\n")

    def repair_torn_tail(self, actor: str = "operator") -> str:
        """Set a torn last line aside: its bytes go to ``evidence/`` (with their sha256), the log is cut
        back to its last complete line, and a ``audit.torn_line_repaired`` record says so. A last line
        that is a complete, signed record missing only its newline is completed instead. Returns what
        was done."""
        with self.locked():
            scan = scan_log(self.path)
            if not scan.torn_bytes:
                return "nothing to repair: the log ends with a complete line"
            data = self.path.read_bytes()
            torn = data[scan.torn_offset :]
            try:
                candidate = AuditRecord.model_validate_json(torn)
                expected_prev = scan.records[-1].record_hash if scan.records else GENESIS_HASH
                complete = self.record_is_authentic(candidate) and candidate.prev_hash == expected_prev
            except (ValidationError, ValueError):
                candidate, complete = None, False
            if complete and candidate is not None:
                with open(self.path, "ab") as handle:
                    handle.write(b"\n")
                    os.fsync(handle.fileno())
                self._write_head(candidate)
                return f"completed record seq {candidate.seq}: it was whole and signed, only its newline was missing"
            self.evidence_dir.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
            evidence = self.evidence_dir / f"torn-line-{stamp}.bin"
            evidence.write_bytes(torn)
            with open(self.path, "r+b") as handle:
                handle.truncate(scan.torn_offset)
                os.fsync(handle.fileno())
        record = self.append(
            TORN_LINE_REPAIRED,
            actor=actor,
            subject=str(self.path.name),
            payload={
                "evidence_file": str(evidence),
                "evidence_sha256": hashlib.sha256(torn).hexdigest(),
                "torn_bytes": len(torn),
                "byte_offset": scan.torn_offset,
            },
        )
        return (
            f"set {len(torn)} torn bytes aside in {evidence} (sha256 {record.payload['evidence_sha256'][:16]}...); "
            f"recorded as seq {record.seq}"
        )

    # ------------------------------------------------------------------ reads

    def head(self) -> AuditHead | None:
        if not self.head_path.exists():
            return None
        try:
            return AuditHead.model_validate_json(self.head_path.read_text())
        except (ValidationError, ValueError):
            return AuditHead(seq=-1, record_hash="unreadable head file")

    def records(self) -> list[AuditRecord]:
        """Every complete, readable record in file order (torn or unreadable lines are skipped; ``verify``
        names them)."""
        return scan_log(self.path).records

    def find(self, record_hash: str) -> AuditRecord | None:
        return next((r for r in self.records() if r.record_hash == record_hash), None)

    def alerts(self) -> list[dict[str, Any]]:
        if not self.alerts_path.exists():
            return []
        return [json.loads(line) for line in self.alerts_path.read_text().splitlines() if line.strip()]

    def verify(self) -> AuditVerification:
        return verify_audit_log(self)


def verify_audit_log(log: AuditLog) -> AuditVerification:
    """Check every record's hash, signature, link and sequence number, the torn tail, and the head.

    An edited record fails its hash; a forged one (hash recomputed) its signature; a deleted or moved
    record breaks the link and the sequence; a cut-off tail disagrees with the signed head.
    """
    scan = scan_log(log.path)
    problems: list[str] = []
    notes: list[str] = []
    expected_prev, expected_seq, last = GENESIS_HASH, 0, None
    for line in scan.lines:
        if line.record is None:
            problems.append(f"line {line.line_number}: {line.problem}")
            expected_prev, expected_seq = "", expected_seq + 1
            continue
        record = line.record
        where = f"line {line.line_number} (seq {record.seq})"
        if record.compute_hash() != record.record_hash:
            problems.append(f"{where}: content does not match its hash (edited)")
        elif not log.keyring.verify(record.signature, "platform", RECORD_DOMAIN, record.record_hash):
            problems.append(f"{where}: not signed by a trusted platform key (written around the platform)")
        if record.seq != expected_seq:
            problems.append(f"{where}: sequence number {record.seq}, expected {expected_seq} (deleted or reordered)")
        if record.prev_hash != expected_prev:
            problems.append(
                f"{where}: previous-record hash does not match the record before it (deleted, inserted or reordered)"
            )
        expected_prev, expected_seq, last = record.record_hash, record.seq + 1, record
    if scan.torn_bytes:
        problems.append(
            f"line {len(scan.lines) + 1}: torn last line ({scan.torn_bytes} bytes, no newline): an append that did "
            f"not finish; `{REPAIR_COMMAND}` sets it aside as evidence"
        )

    head = log.head()
    if head is None:
        if scan.records:
            problems.append(f"head file {log.head_path} is missing")
    elif not head.verify_with(log.keyring, "platform", HEAD_DOMAIN):
        problems.append(f"head file {log.head_path} is not signed by a trusted platform key (rewritten)")
    else:
        by_seq = {record.seq: record for record in scan.records}
        if head.seq not in by_seq:
            problems.append(
                f"the signed head names seq {head.seq} {head.record_hash[:16]}, the log ends at seq "
                f"{last.seq if last else '-'} (records cut off)"
            )
        elif by_seq[head.seq].record_hash != head.record_hash:
            problems.append(f"record seq {head.seq} differs from the signed head (rewritten)")
        elif last is not None and last.seq > head.seq:
            notes.append(
                f"{last.seq - head.seq} signed record(s) after the head: an append was interrupted before "
                "moving the head; the next append moves it"
            )
    if alerts := log.alerts():
        notes.append(f"{len(alerts)} alert(s) raised by the platform, last: {alerts[-1]['problem']} ({log.alerts_path})")
    return AuditVerification(
        ok=not problems,
        num_records=len(scan.records),
        problems=problems,
        notes=notes,
        head_hash=last.record_hash if last else None,
    )


__all__ = [
    "AuditHead",
    "AuditIntegrityError",
    "AuditLog",
    "AuditRecord",
    "AuditVerification",
    "LogScan",
    "canonical_json",
    "redact_secrets",
    "scan_log",
    "sha256_text",
    "verify_audit_log",
]
