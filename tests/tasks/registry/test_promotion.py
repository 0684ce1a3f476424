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


def _gate(passed_threshold: bool = True):
    from tasks.evaluate.gates import GateCheck, GateDecision, GatePolicy, MetricThreshold, NonRegressionRule

    policy = GatePolicy(thresholds=[MetricThreshold(metric="demo_vqa/accuracy", minimum=0.3)],
                        non_regression=[NonRegressionRule(metric="demo_vqa/accuracy", margin=0.05)])
    return GateDecision(
        passed=passed_threshold, policy=policy, candidate_weights_sha256="c" * 64, production_weights_sha256="p" * 64,
        rules_version=2,
        checks=[
            GateCheck(rule="threshold", metric="demo_vqa/accuracy", passed=passed_threshold, candidate=0.62, limit=0.3,
                      reason="within bounds" if passed_threshold else "0.62 < minimum 0.3"),
            GateCheck(rule="non_regression", metric="demo_vqa/accuracy", passed=True, candidate=0.62, production=0.60,
                      delta=0.02, ci_low=-0.031, ci_high=0.071, limit=-0.05, num_samples=200, required_samples=150,
                      reason="non-inferior"),
        ],
    )


def _evidence(**changes) -> EvidenceInputs:
    from tasks.evaluate.review_samples import image_data_uri
    from tasks.promotion import ContaminationSummary
    from tests.eve_model.training_datasets import _draw

    values = dict(
        candidate_metrics={"demo_vqa/accuracy": 0.62, "heldout_text/perplexity": 1.9},
        production_version="v0.1.0",
        production_metrics={"demo_vqa/accuracy": 0.60, "heldout_text/perplexity": 2.1},
        lower_is_better=["heldout_text/perplexity", "duplicate_rate"],
        gate=_gate(),
        baselines={"demo_vqa/accuracy": {"uniform chance": 0.226, "most common answer": 0.285}},
        before_sft_metrics={"demo_vqa/accuracy": 0.0},
        production_approval='eve@v0.1.0, approved by carol at 2026-12-01 10:00 UTC: "fine"',
        contamination=ContaminationSummary(num_eval_images=100, num_train_images=412, num_contaminated_images=0,
                                           near_duplicate_threshold=0.95, max_cosine=0.912, eval_texts_checked=200,
                                           ngram_overlap_rate=0.0),
        caption_quality={"mean_words": 11.0, "duplicate_rate": 0.02},
        previous_caption_quality={"mean_words": 12.5, "duplicate_rate": 0.01},
        sample_generations=[SampleGeneration(
            image_key="demo_vqa/eval-1-colour", prompt="What is | this?", candidate_output="red", production_output="blue",
            reference="red", question_type="colour", candidate_score=1.0,
            image_data_uri=image_data_uri(_draw("circle", (220, 30, 30), (64, 48))),
        )],
    )
    return EvidenceInputs(**{**values, **changes})


def test_evidence_report_puts_every_fact_of_the_decision_in_the_form_and_hashes_its_text(registry_inputs):
    _, lineage = registry_inputs(1)
    evidence = _evidence()
    report = build_evidence_report("v0.2.0", "alice", evidence, lineage, RULE.model_copy(update={"decision_timeout_seconds": 3 * 86400}))
    text = report.markdown
    # Each metric with the gate's limits and verdicts, production and the delta, the model before SFT, both baselines.
    assert ("- `demo_vqa/accuracy` **0.62** · gate: pass ≥ 0.3; pass Δ vs production ≥ -0.05 · production v0.1.0: "
            "0.6 (+0.02, better) · before SFT: 0 · most common answer: 0.285 · uniform chance: 0.226\n") in text
    assert "- `heldout_text/perplexity` **1.9** · production v0.1.0: 2.1 (-0.2, better)\n" in text
    # Every rule of the gate with its numbers: values, CI, limit, sample size, verdict.
    assert ("- **pass** non-regression `demo_vqa/accuracy`: candidate 0.62, production 0.6, Δ +0.02 [-0.031, +0.071], "
            "limit Δ vs production ≥ -0.05, n 200 (150 needed); non-inferior") in text
    assert "- **pass** threshold `demo_vqa/accuracy`: candidate 0.62, limit ≥ 0.3; within bounds" in text
    assert "The evaluation gate passed" in text
    assert 'Production: eve@v0.1.0, approved by carol at 2026-12-01 10:00 UTC: "fine".' in text
    assert "**none found** among 100 evaluation and 412 training images" in text and "cosine 0.912" in text
    assert "- `duplicate_rate` 0.02 (previous 0.01, +0.01, **worse**)" in text
    assert "- `mean_words` 11 (previous 12.5, -1.5, **worse**)" in text
    # The sample's image is inline, with the question, the right answer and both models' answers marked.
    assert "| ![demo_vqa/eval-1-colour](data:image/png;base64," in text
    assert "What is \\| this? _(colour)_ · right answer: **red** · candidate: red ✓ · production: blue ✗ |" in text
    assert "within **3 days** of the request" in text and "259200" not in text
    assert "Requested by **alice**" in text and "Allowed reviewers: bob, carol" in text
    assert lineage.raw_sources[0].dataset_hash[:12] in text
    assert report.sha256 == hashlib.sha256(text.encode()).hexdigest()
    other = build_evidence_report("v0.2.0", "alice", _evidence(candidate_metrics={"demo_vqa/accuracy": 0.5}), lineage, RULE)
    assert other.sha256 != report.sha256
    failing = build_evidence_report("v0.2.0", "alice", _evidence(gate=_gate(passed_threshold=False)), lineage, RULE)
    assert "The evaluation gate **failed** (1 check(s))" in failing.markdown
    assert "- **FAIL** threshold `demo_vqa/accuracy`: candidate 0.62, limit ≥ 0.3; 0.62 < minimum 0.3" in failing.markdown
    rollback = build_evidence_report("v0.1.0", "alice", _evidence(), lineage, RULE, kind="rollback")
    assert rollback.markdown.startswith("# Roll production back to eve@v0.1.0") and "**rollback**" in rollback.markdown


def test_the_review_form_requires_both_fields_and_fills_in_neither():
    """The form's schema (what the Prefect UI draws): decision and comment required, no preselected answer."""
    from prefect._internal.pydantic.v2_schema import create_v2_schema

    from tasks.promotion import ReviewDecision

    form = ReviewDecision.with_initial_data(description="# evidence")
    schema = create_v2_schema(form.__name__, model_base=form)
    assert schema["required"] == ["decision", "comment"]
    assert all("default" not in field for field in schema["properties"].values())
    assert schema["properties"]["decision"]["enum"] == ["approve", "reject"]
    assert form._description == "# evidence"


@pytest.mark.parametrize(("seconds", "text"), [(259200, "3 days"), (129600, "1 day 12 hours"), (7200, "2 hours"),
                                               (2700, "45 minutes"), (90, "1 minute 30 seconds"), (0, "0 seconds")])
def test_durations_in_the_form_are_in_human_units(seconds, text):
    from tasks.promotion import describe_duration

    assert describe_duration(seconds) == text
