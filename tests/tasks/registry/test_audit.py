"""The audit log: a signed hash chain with a signed head. Any edit, deletion, reordering, cut or forged
record is reported; appending refuses to seal over a log that disagrees with its head; a torn last line
is reported, never crashes a reader, and is set aside by an explicit repair that keeps the evidence."""

from __future__ import annotations

import json
import threading

import pytest

from tasks.audit import REDACTED, TORN_LINE_REPAIRED, AuditIntegrityError, AuditLog, scan_log
from tasks.signing import KeyRing, SigningKeyError


@pytest.fixture
def keyring(tmp_path) -> KeyRing:
    return KeyRing(tmp_path / "keys")


@pytest.fixture
def filled_log(tmp_path, keyring) -> AuditLog:
    log = AuditLog(tmp_path / "audit" / "audit.jsonl", keyring)
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
    assert all(filled_log.record_is_authentic(record) for record in records)


def test_edited_payload_is_detected(filled_log):
    lines = _lines(filled_log)
    record = json.loads(lines[2])
    record["actor"] = "mallory"
    lines[2] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    _write(filled_log, lines)
    result = filled_log.verify()
    assert not result.ok
    assert "line 3" in result.problems[0] and "edited" in result.problems[0]


def test_a_forged_record_with_recomputed_hashes_and_head_is_detected(filled_log):
    """Rewrite record 1 and recompute every later hash and the head, as a careful forger would: without
    the platform key, neither the records nor the head carry a valid signature."""
    from tasks.audit import AuditHead
    from tasks.signing import canonical_json

    records = filled_log.records()
    forged = [records[0]]
    for record in records[1:]:
        update = {"prev_hash": forged[-1].record_hash}
        if record.seq == 1:
            update["actor"] = "mallory"
        changed = record.model_copy(update=update)
        changed.record_hash = changed.compute_hash()
        forged.append(changed)
    _write(filled_log, [canonical_json(r.model_dump(mode="json")) for r in forged])
    head = AuditHead(seq=forged[-1].seq, record_hash=forged[-1].record_hash)
    filled_log.head_path.write_text(canonical_json(head.model_dump(mode="json")))
    result = filled_log.verify()
    assert not result.ok
    assert "line 2 (seq 1)" in result.problems[0] and "not signed" in result.problems[0]
    assert any("head file" in p and "not signed" in p for p in result.problems)
    with pytest.raises(AuditIntegrityError, match="not signed"):
        filled_log.append("x")


def test_deleted_middle_record_is_detected(filled_log):
    lines = _lines(filled_log)
    del lines[1]
    _write(filled_log, lines)
    result = filled_log.verify()
    assert not result.ok
    assert any("deleted" in p for p in result.problems)


def test_reordered_records_are_detected(filled_log):
    lines = _lines(filled_log)
    lines[1], lines[2] = lines[2], lines[1]
    _write(filled_log, lines)
    result = filled_log.verify()
    assert not result.ok
    assert any("reordered" in p for p in result.problems)


def test_a_cut_tail_with_a_rewritten_head_is_detected(filled_log):
    """Cut the last two records and write a head that matches the cut log: the head has no valid signature."""
    _write(filled_log, _lines(filled_log)[:-2])
    last = filled_log.records()[-1]
    filled_log.head_path.write_text(json.dumps({"seq": last.seq, "record_hash": last.record_hash}))
    result = filled_log.verify()
    assert not result.ok and any("head file" in p and "not signed" in p for p in result.problems)


def test_after_a_plain_cut_append_refuses_and_alerts_instead_of_sealing_it(filled_log):
    _write(filled_log, _lines(filled_log)[:-1])
    with pytest.raises(AuditIntegrityError, match="cut"):
        filled_log.append("review.decision_accepted", actor="mallory")
    assert len(filled_log.records()) == 4  # nothing appended, the cut stays visible
    assert "cut" in filled_log.alerts()[-1]["problem"]
    result = filled_log.verify()
    assert not result.ok and any("records cut off" in p for p in result.problems)
    assert any("alert" in note for note in result.notes)


def test_a_torn_last_line_is_reported_never_crashes_and_is_repaired_with_its_evidence(filled_log):
    with open(filled_log.path, "a") as handle:
        handle.write('{"seq":5,"recorded_at":"2026-')  # an append that did not finish
    scan = scan_log(filled_log.path)
    assert scan.torn_bytes == len('{"seq":5,"recorded_at":"2026-') and len(scan.records) == 5
    assert len(filled_log.records()) == 5  # readers see the complete records
    result = filled_log.verify()
    assert not result.ok and "torn last line" in result.problems[0] and "eve audit repair" in result.problems[0]
    with pytest.raises(AuditIntegrityError, match="torn line"):
        filled_log.append("x")

    outcome = filled_log.repair_torn_tail(actor="ops")
    assert "set" in outcome and "aside" in outcome
    evidence = list(filled_log.evidence_dir.glob("torn-line-*.bin"))
    assert len(evidence) == 1 and evidence[0].read_text() == '{"seq":5,"recorded_at":"2026-'
    repaired = filled_log.records()[-1]
    assert repaired.event == TORN_LINE_REPAIRED and repaired.actor == "ops"
    assert repaired.payload["torn_bytes"] == len('{"seq":5,"recorded_at":"2026-')
    assert filled_log.verify().ok
    filled_log.append("after.repair")
    assert filled_log.verify().ok


def test_a_whole_signed_record_missing_only_its_newline_is_completed_not_discarded(filled_log):
    text = filled_log.path.read_text()
    filled_log.path.write_text(text[:-1])  # the last record lost its newline only
    assert not filled_log.verify().ok
    assert "completed record seq 4" in filled_log.repair_torn_tail()
    assert filled_log.verify().ok and len(filled_log.records()) == 5


def test_an_append_interrupted_before_its_head_moved_is_healed_by_the_next_append(filled_log):
    head = filled_log.head_path.read_text()
    filled_log.append("crashed.before.head")
    filled_log.head_path.write_text(head)  # as if killed between the line and the head
    result = filled_log.verify()
    assert result.ok and any("interrupted" in note for note in result.notes)
    filled_log.append("next")
    assert filled_log.verify().ok and not filled_log.verify().notes


def test_a_process_without_the_platform_key_cannot_append(filled_log, tmp_path):
    public_only = tmp_path / "public-keys"
    public_only.mkdir()
    (public_only / "platform.pub").write_text(filled_log.keyring.public_path("platform").read_text())
    reader = AuditLog(filled_log.path, KeyRing(public_only))
    assert reader.verify().ok  # verification needs only the public key
    with pytest.raises(SigningKeyError, match="does not hold"):
        reader.append("review.decision_accepted", actor="mallory")


def test_secrets_never_reach_the_log(tmp_path, keyring):
    log = AuditLog(tmp_path / "audit.jsonl", keyring)
    log.append(
        "promotion.requested", payload={"s3": {"aws_secret_access_key": "hunter2", "bucket": "b"}, "api_token": "t"}
    )
    text = log.path.read_text()
    assert "hunter2" not in text and '"t"' not in text
    assert log.records()[0].payload["s3"] == {"aws_secret_access_key": REDACTED, "bucket": "b"}
    assert log.verify().ok


def test_concurrent_appends_form_one_valid_chain(tmp_path, keyring):
    log = AuditLog(tmp_path / "audit.jsonl", keyring)
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
