"""Judging review submissions and the evidence report, without a Prefect server (the flow tests drive
the real pause through the authenticating server)."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from tasks.accounts import Account
from tasks.approvals import judge_submission, make_request
from tasks.gateway import SUBMISSION_FIELD, issue_submission_claim
from tasks.policy import ReviewRule
from tasks.promotion import EvidenceInputs, SampleGeneration, build_evidence_report
from tasks.signing import KeyRing

RULE = ReviewRule(allowed_reviewers=["bob", "carol"])


@pytest.fixture
def keyring(tmp_path) -> KeyRing:
    return KeyRing(tmp_path / "keys")


@pytest.fixture
def request_by_bob(keyring):
    return make_request(
        model="eve", version="v0.2.0", kind="promotion", flow_run_id=str(uuid.uuid4()), requested_by="bob",
        requester_kind="user", evidence_sha256="e" * 64, rule=RULE, policy_sha256="p" * 64, keyring=keyring,
    )


def _submitted(keyring, request, account: str, kind: str = "user", **run_input):
    person = Account(name=account, kind=kind, password_bcrypt="-", created_at="-")
    return issue_submission_claim(run_input, person, request.flow_run_id, keyring)


@pytest.mark.parametrize(
    ("account", "kind", "run_input", "expected_reason"),
    [
        ("mallory", "user", {"decision": "approve", "comment": "ok"}, "not an allowed reviewer"),
        ("bob", "user", {"decision": "approve", "comment": "ok"}, "cannot review it"),
        ("carol", "user", {"decision": "approve", "comment": "   "}, "comment is required"),
        ("carol", "user", {"decision": "reject", "comment": ""}, "comment is required"),
        ("carol", "service", {"decision": "approve", "comment": "ok"}, "only people review"),
        ("carol", "user", {"decision": "approve", "comment": "ok", "password": "x"}, "unexpected fields"),
    ],
)
def test_the_platform_refuses(keyring, request_by_bob, account, kind, run_input, expected_reason):
    verdict = judge_submission(_submitted(keyring, request_by_bob, account, kind, **run_input), request_by_bob, [],
                               set(), keyring)
    assert verdict.decision is None
    assert any(expected_reason in reason for reason in verdict.reasons), verdict.reasons


@pytest.mark.parametrize("outcome", ["approve", "reject"])
def test_an_allowed_other_person_with_a_comment_is_accepted_and_a_typed_name_ignored(keyring, request_by_bob, outcome):
    submitted = _submitted(keyring, request_by_bob, "carol", decision=outcome, comment="why", reviewer="bob")
    verdict = judge_submission(submitted, request_by_bob, [], set(), keyring)
    assert verdict.reasons == [] and verdict.decision.reviewer == "carol"
    decision = verdict.decision
    assert (decision.request_id, decision.version, decision.flow_run_id) == (
        request_by_bob.request_id, "v0.2.0", request_by_bob.flow_run_id
    )
    assert keyring.verify(decision.signature, "platform", "eve-review-decision/1", decision.signed_content())


def test_identity_claims_cannot_be_missing_forged_moved_or_replayed(keyring, request_by_bob, tmp_path):
    plain = {"decision": "approve", "comment": "ok"}
    assert "no authenticated identity" in judge_submission(plain, request_by_bob, [], set(), keyring).reasons[0]

    other_gateway = KeyRing(tmp_path / "other-keys")  # a key the platform does not trust
    forged = _submitted(other_gateway, request_by_bob, "carol", **plain)
    assert "not signed by the platform's server" in judge_submission(forged, request_by_bob, [], set(), keyring).reasons[0]

    elsewhere = issue_submission_claim(plain, Account(name="carol", kind="user", password_bcrypt="-", created_at="-"),
                                       str(uuid.uuid4()), keyring)
    assert "not this one" in judge_submission(elsewhere, request_by_bob, [], set(), keyring).reasons[0]

    edited = {**_submitted(keyring, request_by_bob, "carol", decision="reject", comment="no"), "decision": "approve"}
    assert "differs from what was submitted" in judge_submission(edited, request_by_bob, [], set(), keyring).reasons[0]

    good = _submitted(keyring, request_by_bob, "carol", **plain)
    nonce = good[SUBMISSION_FIELD]["nonce"]
    assert judge_submission(good, request_by_bob, [], set(), keyring).decision is not None
    replayed = judge_submission(good, request_by_bob, [], {nonce}, keyring)
    assert replayed.decision is None and "replayed" in replayed.reasons[0]
    twice = judge_submission(_submitted(keyring, request_by_bob, "carol", **plain), request_by_bob, ["carol"], set(),
                             keyring)
    assert "already approved" in twice.reasons[0]


def test_evidence_report_shows_deltas_samples_rule_and_hashes_its_text(registry_inputs):
    _, lineage = registry_inputs(1)
    candidate = {"vqa_accuracy": 0.62, "loss": 1.9}
    production = {"vqa_accuracy": 0.60, "loss": 2.1}
    evidence = EvidenceInputs(
        candidate_metrics=candidate,
        production_version="v0.1.0",
        production_metrics=production,
        lower_is_better=["loss"],
        caption_quality={"mean_words": 11.0},
        previous_caption_quality={"mean_words": 12.5},
        sample_generations=[SampleGeneration(image_key="img-1", prompt="What is | this?", candidate_output="a cube")],
    )
    report = build_evidence_report("v0.2.0", "alice", evidence, lineage, RULE)
    for name in candidate:
        delta = candidate[name] - production[name]
        assert f"| {name} | {candidate[name]:.4g} | {production[name]:.4g} | {delta:+.4g} | better |" in report.markdown
    assert f"{11.0 - 12.5:+.4g} | **worse** |" in report.markdown
    assert "What is \\| this?" in report.markdown
    assert "Requested by **alice**" in report.markdown and "Allowed reviewers: bob, carol" in report.markdown
    assert lineage.raw_sources[0].dataset_hash[:12] in report.markdown
    assert report.sha256 == hashlib.sha256(report.markdown.encode()).hexdigest()
    other = build_evidence_report(
        "v0.2.0", "alice", evidence.model_copy(update={"candidate_metrics": {"vqa_accuracy": 0.5}}), lineage, RULE
    )
    assert other.sha256 != report.sha256
    rollback = build_evidence_report("v0.1.0", "alice", evidence, lineage, RULE, kind="rollback")
    assert rollback.markdown.startswith("# Roll production back to eve@v0.1.0") and "**rollback**" in rollback.markdown
