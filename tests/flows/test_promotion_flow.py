"""The promotion flow against a real Prefect server: the pause, the policy, the audit trail, the registry.

Decisions are sent the way another process would (``prefect.flow_runs.resume_flow_run``); the browser
test drives the same pause through the UI.
"""

from __future__ import annotations

import hashlib

import pytest

from tasks import audit
from tests.fixtures.promotion_runs import promotion_request, registry_with_production, start_promotion, wait_for_pause

pytestmark = pytest.mark.slow


def _events(registry, subject="eve@v0.2.0"):
    return [(r.event, r.actor) for r in registry.audit_log.records() if r.subject == subject]


def test_refused_decisions_keep_waiting_and_a_rejection_changes_nothing(prefect_server, eve_home, registry_inputs):
    from prefect.flow_runs import resume_flow_run

    registry = registry_with_production(registry_inputs)
    run = start_promotion(promotion_request())
    paused = wait_for_pause(run)
    attempts = [
        ({"decision": "approve", "reviewer": "alice", "comment": "ship it"}, "cannot review it"),  # self-approval
        ({"decision": "approve", "reviewer": "mallory", "comment": "ship it"}, "not on the allowed list"),
        ({"decision": "approve", "reviewer": "bob", "comment": ""}, "comment is required"),
    ]
    for run_input, reason in attempts:
        resume_flow_run(paused.id, run_input=run_input)
        paused = wait_for_pause(run, after_pause_key=paused.state.state_details.pause_key)
        refused = registry.audit_log.records()[-1]
        assert refused.event == audit.REVIEW_DECISION_REFUSED and refused.actor == run_input["reviewer"]
        assert any(reason in r for r in refused.payload["reasons"])
        assert registry.production_version() == "v0.1.0"

    resume_flow_run(paused.id, run_input={"decision": "reject", "reviewer": "bob", "comment": "CIDEr regressed"})
    outcome = run.join()
    assert outcome.status == "rejected" and outcome.refused_decisions == 3
    assert registry.production_version() == "v0.1.0"
    assert _events(registry) == [
        ("registry.candidate_registered", "platform"),
        ("promotion.requested", "alice"),
        ("review.decision_refused", "alice"),
        ("review.decision_refused", "mallory"),
        ("review.decision_refused", "bob"),
        ("review.decision_accepted", "bob"),
        ("promotion.rejected", "bob"),
    ]
    assert registry.audit_log.verify().ok


def test_no_decision_before_the_deadline_is_a_rejection(prefect_server, eve_home, registry_inputs):
    registry = registry_with_production(registry_inputs)
    outcome = start_promotion(promotion_request(timeout_seconds=3)).join()
    assert outcome.status == "timed_out" and outcome.approval is None
    assert registry.production_version() == "v0.1.0"
    assert _events(registry)[-2:] == [("review.timed_out", "platform"), ("promotion.rejected", "platform")]
    assert registry.audit_log.verify().ok


def test_approval_through_the_api_moves_production_with_the_evidence_hash(prefect_server, eve_home, registry_inputs):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.flow_runs import resume_flow_run

    registry = registry_with_production(registry_inputs)
    run = start_promotion(promotion_request())
    paused = wait_for_pause(run)
    resume_flow_run(
        paused.id, run_input={"decision": "approve", "reviewer": "carol", "comment": "VQA up, CIDEr within noise"}
    )
    outcome = run.join()
    assert outcome.status == "approved"
    assert registry.production_version() == "v0.2.0"

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[paused.id]))
        )
    evidence = next(a for a in artifacts if a.key == "evidence-eve-v0-2-0")
    shown_markdown = evidence.data.rsplit("\n\n_evidence sha256", 1)[0]
    assert hashlib.sha256(shown_markdown.encode()).hexdigest() == outcome.approval.evidence_sha256
    assert any(a.key == "lineage-eve-v0-2-0" for a in artifacts)

    assignment = [e for e in registry.history() if e.event == "assignment"][-1]
    assert (assignment.version, assignment.reviewer, assignment.comment) == (
        "v0.2.0",
        "carol",
        "VQA up, CIDEr within noise",
    )
    assert assignment.evidence_sha256 == outcome.approval.evidence_sha256
    assert registry.lineage("v0.2.0").approvals[-1].reviewer == "carol"
    assert _events(registry)[-2:] == [("review.decision_accepted", "carol"), ("registry.production_assigned", "carol")]
    assert registry.audit_log.verify().ok
