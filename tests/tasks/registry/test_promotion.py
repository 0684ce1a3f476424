"""Approval policy and evidence report, without a Prefect server (the flow tests drive the real pause)."""

from __future__ import annotations

import pytest

from tasks.promotion import (
    ApprovalPolicy,
    EvidenceInputs,
    ReviewDecision,
    SampleGeneration,
    build_evidence_report,
    check_review_decision,
)

POLICY = ApprovalPolicy(allowed_reviewers=["bob", "carol"])


@pytest.mark.parametrize(
    ("decision", "expected_reason"),
    [
        ({"decision": "approve", "reviewer": "mallory", "comment": "ok"}, "not on the allowed list"),
        ({"decision": "approve", "reviewer": "bob", "comment": "ok"}, "cannot review it"),
        ({"decision": "approve", "reviewer": "carol", "comment": "   "}, "comment is required"),
        ({"decision": "reject", "reviewer": "carol", "comment": ""}, "comment is required"),
    ],
)
def test_policy_refuses(decision, expected_reason):
    reasons = check_review_decision(ReviewDecision(**decision), POLICY, requested_by="Bob")
    assert any(expected_reason in reason for reason in reasons)


@pytest.mark.parametrize("outcome", ["approve", "reject"])
def test_policy_accepts_a_listed_other_reviewer_with_a_comment(outcome):
    assert check_review_decision(ReviewDecision(decision=outcome, reviewer="carol", comment="why"), POLICY, "bob") == []


def test_evidence_report_shows_deltas_samples_and_hashes_its_text(registry_inputs):
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
    report = build_evidence_report("v0.2.0", "alice", evidence, lineage, POLICY)
    for name in candidate:
        delta = candidate[name] - production[name]
        assert f"| {name} | {candidate[name]:.4g} | {production[name]:.4g} | {delta:+.4g} | better |" in report.markdown
    assert f"{11.0 - 12.5:+.4g} | **worse** |" in report.markdown
    assert "What is \\| this?" in report.markdown
    assert lineage.raw_sources[0].dataset_hash[:12] in report.markdown
    assert report.sha256 == __import__("hashlib").sha256(report.markdown.encode()).hexdigest()
    other = build_evidence_report(
        "v0.2.0", "alice", evidence.model_copy(update={"candidate_metrics": {"vqa_accuracy": 0.5}}), lineage, POLICY
    )
    assert other.sha256 != report.sha256
