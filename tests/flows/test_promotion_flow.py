"""The promotion flow against the platform's real Prefect server (Prefect's app behind the authenticating
gateway): identities from authentication, the policy from platform configuration, the audit trail, the
registry.

Decisions are sent over HTTP with an account's credentials, as the UI's Resume button and ``eve promote``
send them; the browser test drives the same pause through the UI.
"""

from __future__ import annotations

import hashlib

import pytest

from tasks import audit
from tests.fixtures.promotion_runs import (
    eve_as,
    promotion_request,
    registry_with_production,
    start_promotion,
    submit_decision,
    use_policy,
    wait_for_pause,
)

pytestmark = pytest.mark.slow


def _events(registry, subject="eve@v0.2.0"):
    return [(r.event, r.actor) for r in registry.audit_log.records() if r.subject == subject]


def test_decisions_are_judged_by_the_authenticated_account_and_a_rejection_changes_nothing(
    prefect_server, prefect_accounts, eve_home, registry_inputs
):
    use_policy(reviewers=("alice", "bob", "carol"))
    registry = registry_with_production(registry_inputs)
    alice = prefect_accounts.auth("alice")
    run = start_promotion(promotion_request(), requested_as=alice)
    paused = wait_for_pause(run)
    key = paused.state.state_details.pause_key

    # No credentials: the server answers 401 and the run never sees it.
    assert submit_decision(prefect_server, None, paused.id, {"decision": "approve", "comment": "x"})["status_code"] == 401
    assert submit_decision(prefect_server, "bob:wrong-password", paused.id, {"decision": "approve", "comment": "x"})[
        "status_code"
    ] == 401
    # A client cannot bring its own identity claim.
    forged = {"decision": "approve", "comment": "x", "eve_authenticated_submission": {"account": "carol"}}
    assert submit_decision(prefect_server, prefect_accounts.auth("bob"), paused.id, forged)["status_code"] == 403

    attempts = [
        (alice, {"decision": "approve", "comment": "ship it"}, "requested this promotion"),
        (prefect_accounts.auth("mallory"), {"decision": "approve", "comment": "ship it"}, "not an allowed reviewer"),
        (prefect_accounts.auth("bob"), {"decision": "approve", "comment": ""}, "comment is required"),
        # The test process's own credentials: a service account never reviews, whatever name it types.
        (None, {"decision": "approve", "comment": "ok", "reviewer": "carol"}, "only people review"),
    ]
    for auth, run_input, reason in attempts:
        from prefect.flow_runs import resume_flow_run

        if auth is None:
            resume_flow_run(paused.id, run_input=run_input)  # as pytest-runner (service)
        else:
            assert submit_decision(prefect_server, auth, paused.id, run_input)["status_code"] in (200, 201)
        paused = wait_for_pause(run, after_pause_key=key)
        key = paused.state.state_details.pause_key
        refused = registry.audit_log.records()[-1]
        assert refused.event == audit.REVIEW_DECISION_REFUSED, refused
        assert any(reason in r for r in refused.payload["reasons"]), refused.payload["reasons"]
        assert registry.production_version() == "v0.1.0"

    # bob types carol's name: the platform records bob, the account that submitted it.
    bob = prefect_accounts.auth("bob")
    submit_decision(prefect_server, bob, paused.id, {"decision": "reject", "reviewer": "carol", "comment": "CIDEr regressed"})
    outcome = run.join()
    assert outcome.status == "rejected" and outcome.refused_decisions == 4
    assert outcome.requested_by == "alice" and outcome.approval.reviewer == "bob"
    assert registry.production_version() == "v0.1.0"
    assert _events(registry) == [
        ("registry.candidate_registered", "platform"),
        ("promotion.requested", "alice"),
        ("review.decision_refused", "alice"),
        ("review.decision_refused", "mallory"),
        ("review.decision_refused", "bob"),
        ("review.decision_refused", "pytest-runner"),
        ("review.decision_accepted", "bob"),
        ("promotion.rejected", "bob"),
    ]
    from tasks.verification import verify_platform

    report = verify_platform()
    assert report.ok, report.problems


def test_no_decision_before_the_deadline_is_a_rejection(prefect_server, prefect_accounts, eve_home, registry_inputs):
    use_policy(timeout_seconds=3)
    registry = registry_with_production(registry_inputs)
    outcome = start_promotion(promotion_request(), requested_as=prefect_accounts.auth("alice")).join()
    assert outcome.status == "timed_out" and outcome.approval is None
    assert registry.production_version() == "v0.1.0"
    assert _events(registry)[-2:] == [("review.timed_out", "platform"), ("promotion.rejected", "platform")]
    assert registry.audit_log.verify().ok


def test_approval_moves_production_with_the_evidence_hash_and_parameters_choose_nothing(
    prefect_server, prefect_accounts, eve_home, registry_inputs
):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from tasks.promotion import ApprovalPolicy
    from tasks.verification import verify_platform

    use_policy(reviewers=("bob", "carol"))
    registry = registry_with_production(registry_inputs)
    # The caller claims to be carol and names its own reviewer: both parameters are ignored.
    request = promotion_request().model_copy(
        update={"requested_by": "carol", "policy": ApprovalPolicy(allowed_reviewers=["alice"])}
    )
    run = start_promotion(request, requested_as=prefect_accounts.auth("alice"))
    paused = wait_for_pause(run)
    assert paused.labels["eve.created_by"] == "alice"
    submit_decision(prefect_server, prefect_accounts.auth("carol"), paused.id,
                    {"decision": "approve", "comment": "VQA up, CIDEr within noise"})
    outcome = run.join()
    assert outcome.status == "approved" and outcome.requested_by == "alice"
    assert registry.production_version() == "v0.2.0"

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[paused.id]))
        )
    evidence = next(a for a in artifacts if a.key == "evidence-eve-v0-2-0")
    shown_markdown = evidence.data.rsplit("\n\n_evidence sha256", 1)[0]
    assert hashlib.sha256(shown_markdown.encode()).hexdigest() == outcome.approval.evidence_sha256
    assert "Requested by **alice**" in shown_markdown and "Allowed reviewers: bob, carol" in shown_markdown

    assignment = [e for e in registry.history() if e.event == "assignment"][-1]
    assert (assignment.version, assignment.reviewer, assignment.comment, assignment.kind) == (
        "v0.2.0", "carol", "VQA up, CIDEr within noise", "promotion",
    )
    assert assignment.evidence_sha256 == outcome.approval.evidence_sha256
    assert registry.lineage("v0.2.0").approvals[-1].reviewer == "carol"
    request_record = next(r for r in registry.audit_log.records() if r.event == audit.PROMOTION_REQUESTED
                          and r.subject == "eve@v0.2.0")
    assert request_record.payload["request"]["requested_by"] == "alice"
    assert request_record.payload["request"]["rule"]["allowed_reviewers"] == ["bob", "carol"]
    assert _events(registry)[-3:] == [
        ("review.decision_accepted", "carol"),
        ("registry.assignment_intent", "carol"),
        ("registry.production_assigned", "carol"),
    ]
    report = verify_platform()
    assert report.ok, report.problems


def test_two_person_rule_needs_two_distinct_reviewers(prefect_server, prefect_accounts, eve_home, registry_inputs):
    use_policy(reviewers=("bob", "carol"), two_person_rule=True)
    registry = registry_with_production(registry_inputs)
    run = start_promotion(promotion_request(), requested_as=prefect_accounts.auth("alice"))
    paused = wait_for_pause(run)
    bob = prefect_accounts.auth("bob")
    for expected in ("accepted", "refused"):  # bob twice: the second is not another person
        key = paused.state.state_details.pause_key
        submit_decision(prefect_server, bob, paused.id, {"decision": "approve", "comment": "fine by me"})
        paused = wait_for_pause(run, after_pause_key=key)
        assert registry.audit_log.records()[-1].event == f"review.decision_{expected}"
        assert registry.production_version() == "v0.1.0"
    assert "already approved" in registry.audit_log.records()[-1].payload["reasons"][0]
    submit_decision(prefect_server, prefect_accounts.auth("carol"), paused.id, {"decision": "approve", "comment": "agreed"})
    outcome = run.join()
    assert outcome.status == "approved" and [a.reviewer for a in outcome.approvals] == ["bob", "carol"]
    assert registry.production_version() == "v0.2.0"
    assert [a.reviewer for a in registry.lineage("v0.2.0").approvals] == ["bob", "carol"]


def test_eve_promote_answers_with_the_platforms_verdict_and_repeats_are_idempotent(
    prefect_server, prefect_accounts, eve_home, registry_inputs, monkeypatch
):
    """From the terminal: a refused decision exits 1 with the policy's reason, an accepted one 0 with what
    happens next; approving again what one approved already answers who and when, sends nothing, exits 0."""
    use_policy(reviewers=("bob", "carol"), two_person_rule=True)
    registry = registry_with_production(registry_inputs)
    alice, bob, carol = (prefect_accounts.auth(name) for name in ("alice", "bob", "carol"))
    run = start_promotion(promotion_request(), requested_as=alice)
    wait_for_pause(run)

    code, out, err = eve_as(monkeypatch, alice, "promote", "approve", "v0.2.0", "--user", "alice", "--comment", "mine")
    assert code == 1 and "refused" in err and "'alice' requested this promotion and cannot review it" in err
    code, out, err = eve_as(monkeypatch, bob, "promote", "approve", "v0.2.0", "--user", "bob", "--comment", "fine")
    assert code == 0 and "approve by bob accepted" in out and "needs another reviewer" in out, out + err
    wait_for_pause(run)
    seen = len(registry.audit_log.records())
    code, out, err = eve_as(monkeypatch, bob, "promote", "approve", "v0.2.0", "--user", "bob", "--comment", "again")
    assert code == 0 and "already approved by bob at" in out, out + err
    assert len(registry.audit_log.records()) == seen  # nothing was sent
    code, out, err = eve_as(monkeypatch, carol, "promote", "approve", "v0.2.0", "--user", "carol", "--comment", "agreed")
    assert code == 0 and "production moves to eve@v0.2.0" in out, out + err
    assert run.join().status == "approved" and registry.production_version() == "v0.2.0"

    code, out, err = eve_as(monkeypatch, carol, "promote", "approve", "v0.2.0", "--user", "carol", "--comment", "again")
    assert code == 0 and "was already approved by bob at" in out and "carol at" in out and "production moved" in out
    code, out, err = eve_as(monkeypatch, carol, "promote", "reject", "v0.2.0", "--user", "carol", "--comment", "oops")
    assert code == 1 and "eve promote request <earlier version>" in err
