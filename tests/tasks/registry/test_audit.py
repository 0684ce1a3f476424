"""The audit log is a hash chain: any edit, deletion or reordering is detected."""

from __future__ import annotations

import json
import threading

import pytest

from tasks.audit import REDACTED, AuditLog, verify_audit_log


@pytest.fixture
def filled_log(tmp_path) -> AuditLog:
    log = AuditLog(tmp_path / "audit" / "audit.jsonl")
    for index in range(5):
        log.append("review.decision_refused", actor=f"user{index}", subject="eve@v0.1.0", payload={"n": index})
    return log


def _lines(log: AuditLog) -> list[str]:
    return log.path.read_text().splitlines()


def _write(log: AuditLog, lines: list[str]) -> None:
    log.path.write_text("".join(line + "\n" for line in lines))


def test_intact_log_verifies_and_chains(filled_log):
    result = filled_log.verify()
    assert result.ok, result.problems
    assert result.num_records == 5
    records = filled_log.records()
    assert [r.seq for r in records] == list(range(5))
    assert all(later.prev_hash == earlier.record_hash for earlier, later in zip(records, records[1:], strict=False))
    assert result.head_hash == records[-1].record_hash


def test_edited_payload_is_detected(filled_log):
    lines = _lines(filled_log)
    record = json.loads(lines[2])
    record["actor"] = "mallory"
    lines[2] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    _write(filled_log, lines)
    result = filled_log.verify()
    assert not result.ok
    assert any("line 3" in p and "edited" in p for p in result.problems)


def test_edit_with_recomputed_hash_breaks_the_next_link(filled_log):
    records = filled_log.records()
    forged = records[1].model_copy(update={"actor": "mallory"})
    forged.record_hash = forged.compute_hash()
    lines = _lines(filled_log)
    lines[1] = forged.model_dump_json()
    _write(filled_log, lines)
    result = filled_log.verify()
    assert not result.ok
    assert any("line 3" in p and "previous-record hash" in p for p in result.problems)


def test_deleted_middle_record_is_detected(filled_log):
    lines = _lines(filled_log)
    del lines[1]
    _write(filled_log, lines)
    result = filled_log.verify()
    assert not result.ok
    assert any("deleted" in p for p in result.problems)


def test_cut_off_tail_is_detected_by_the_head_file(filled_log):
    _write(filled_log, _lines(filled_log)[:-1])
    result = filled_log.verify()
    assert not result.ok
    assert any("head file" in p for p in result.problems)


def test_reordered_records_are_detected(filled_log):
    lines = _lines(filled_log)
    lines[1], lines[2] = lines[2], lines[1]
    _write(filled_log, lines)
    result = verify_audit_log(filled_log.path)
    assert not result.ok
    assert any("reordered" in p for p in result.problems)


def test_secrets_never_reach_the_log(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append(
        "promotion.requested", payload={"s3": {"aws_secret_access_key": "hunter2", "bucket": "b"}, "api_token": "t"}
    )
    text = log.path.read_text()
    assert "hunter2" not in text and '"t"' not in text
    assert log.records()[0].payload["s3"] == {"aws_secret_access_key": REDACTED, "bucket": "b"}
    assert log.verify().ok


def test_concurrent_appends_form_one_valid_chain(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    threads = [
        threading.Thread(target=lambda i=i: [log.append("x", payload={"t": i, "k": k}) for k in range(10)])
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = log.verify()
    assert result.ok, result.problems
    assert result.num_records == 40
