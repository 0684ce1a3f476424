"""Promotion requests and review decisions that cannot be forged or replayed (docs/security.md).

A promotion is one **recorded request** (:class:`RecordedRequest`, signed with the platform key and
written to the audit log): the model version, the evidence hash the reviewer is shown, the flow run
that collects decisions, the authenticated requester, the review rule from the platform's policy,
and the deadline.

A reviewer's submission reaches the flow with the gateway's signed claim of who sent it
(``tasks/gateway.py``). :func:`judge_submission` checks the claim (signature, this flow run, this
input, a nonce never seen before, sent after the request) and the rule (a ``user`` account on the
allowed list, not the requester, a comment, not twice by the same person). An accepted decision is a
:class:`SignedDecision`: bound to the request (request id, version, evidence hash, flow run), valid
for the rule's validity window, signed with the platform key, carrying the gateway's claim.

The production assignment calls :func:`assignment_problems` at the point of use and moves nothing
unless every decision is an accepted one of the audit log whose signatures, binding and rule still
hold and that no earlier assignment consumed. A record appended by hand, a decision replayed for
another version or run, an expired one, a rejected request: each yields a reason instead.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from tasks import audit
from tasks.accounts import AccountKind
from tasks.gateway import SUBMISSION_DOMAIN, SUBMISSION_FIELD, SubmissionClaim, input_sha256, verify_submission
from tasks.lineage.schema import ApprovalRecord
from tasks.policy import ReviewRule
from tasks.signing import KeyRing, SignedModel

INPUT_FIELDS = {"decision", "comment", "reviewer", SUBMISSION_FIELD}
"""What a submission may hold; ``reviewer`` (a typed name, sent by older clients) is ignored."""
REQUEST_DOMAIN = "eve-promotion-request/1"
DECISION_DOMAIN = "eve-review-decision/1"
UNATTRIBUTED = "unattributed"
"""Requester of a run nobody authenticated started (a schedule or trigger inside the Prefect server)."""


class RecordedRequest(SignedModel):
    """One promotion request as the platform recorded it."""

    request_id: str
    """Random id; every decision names it."""

    model: str
    """Registry artifact, e.g. ``eve``."""

    version: str
    """Version to put in production."""

    kind: Literal["promotion", "rollback"]
    """``rollback`` when the version held production before."""

    flow_run_id: str
    """The flow run that collects the decisions."""

    requested_by: str
    """The authenticated account that started it (or ``unattributed``)."""

    requester_kind: AccountKind | Literal["unattributed"]
    """That account's kind."""

    evidence_sha256: str
    """Hash of the evidence report reviewers are shown."""

    rule: ReviewRule
    """The review rule of the platform's policy when the request was made."""

    policy_sha256: str
    """Hash of the whole policy it came from."""

    requested_at: str
    """UTC, ISO 8601."""

    decide_by: str
    """Deadline for the decisions (UTC, ISO 8601)."""



    @property
    def subject(self) -> str:
        return f"{self.model}@{self.version}"


class SignedDecision(SignedModel):
    """A review decision the platform accepted for one request."""

    decision_id: str
    """Random id; an assignment consumes it once."""

    request_id: str
    model: str
    version: str
    flow_run_id: str
    evidence_sha256: str

    decision: Literal["approve", "reject"]
    reviewer: str
    """The authenticated account that submitted it (from the gateway's claim, never typed)."""

    comment: str
    decided_at: str
    valid_until: str
    """After this time the decision can no longer move production."""

    submitted_input: dict[str, Any]
    """The input as the reviewer submitted it (the claim's hash covers it)."""

    submission: SubmissionClaim
    """The gateway's signed claim of who submitted it, where and when."""



    def approval_record(self, requested_by: str) -> ApprovalRecord:
        """The lineage/registry view of the decision (without its audit record hash)."""
        return ApprovalRecord(
            version=self.version,
            decision=self.decision,
            reviewer=self.reviewer,
            comment=self.comment,
            decided_at=self.decided_at,
            evidence_sha256=self.evidence_sha256,
            requested_by=requested_by,
            flow_run_id=self.flow_run_id,
        )


class Verdict(BaseModel):
    """What :func:`judge_submission` decided about one submission."""

    decision: SignedDecision | None = None
    """The accepted decision; None when refused."""

    reasons: list[str] = Field(default_factory=list)
    """Why it was refused."""

    submitted_by: str | None = None
    """The authenticated account behind it, when the claim is valid."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment)


def make_request(
    *,
    model: str,
    version: str,
    kind: Literal["promotion", "rollback"],
    flow_run_id: str,
    requested_by: str,
    requester_kind: str,
    evidence_sha256: str,
    rule: ReviewRule,
    policy_sha256: str,
    keyring: KeyRing,
) -> RecordedRequest:
    """A new signed request; the deadline is the rule's decision timeout from now."""
    now = _now()
    request = RecordedRequest(
        request_id=uuid.uuid4().hex,
        model=model,
        version=version,
        kind=kind,
        flow_run_id=str(flow_run_id),
        requested_by=requested_by,
        requester_kind=requester_kind,
        evidence_sha256=evidence_sha256,
        rule=rule,
        policy_sha256=policy_sha256,
        requested_at=now.isoformat(),
        decide_by=(now + timedelta(seconds=rule.decision_timeout_seconds)).isoformat(),
    )
    request.sign_with(keyring, "platform", REQUEST_DOMAIN)
    return request


def used_nonces(records: list[audit.AuditRecord]) -> set[str]:
    """Nonces of every submission the platform has judged (accepted or refused)."""
    nonces = set()
    for record in records:
        if record.event == audit.REVIEW_DECISION_ACCEPTED:
            nonce = ((record.payload.get("decision") or {}).get("submission") or {}).get("nonce")
        elif record.event == audit.REVIEW_DECISION_REFUSED:
            nonce = (record.payload.get("submission") or {}).get("nonce")
        else:
            continue
        if nonce:
            nonces.add(nonce)
    return nonces


def judge_submission(
    run_input: dict[str, Any],
    request: RecordedRequest,
    approved_by: list[str],
    seen_nonces: set[str],
    keyring: KeyRing,
) -> Verdict:
    """Accept (and sign) or refuse one submitted decision for ``request``; ``approved_by`` are the
    reviewers whose approvals this request already has."""
    claim, problem = verify_submission(run_input, request.flow_run_id, keyring)
    if problem:
        return Verdict(reasons=[problem])
    assert claim is not None
    reasons = []
    if claim.nonce in seen_nonces:
        reasons.append("this submission was already judged (replayed)")
    if _parse(claim.submitted_at) < _parse(request.requested_at):
        reasons.append("submitted before this promotion was requested (replayed)")
    if _parse(claim.submitted_at) > _parse(request.decide_by):
        reasons.append("submitted after the deadline")
    reviewer = claim.account
    if unexpected := sorted(set(run_input) - INPUT_FIELDS):
        reasons.append(f"unexpected fields {unexpected}")
    if claim.account_kind != "user":
        reasons.append(f"{reviewer!r} is a {claim.account_kind} account; only people review")
    if reviewer not in request.rule.allowed_reviewers:
        reasons.append(f"{reviewer!r} is not an allowed reviewer of {request.model} (policy)")
    if reviewer == request.requested_by:
        reasons.append(f"{reviewer!r} requested this promotion and cannot review it")
    if reviewer in approved_by:
        reasons.append(f"{reviewer!r} already approved this promotion; another reviewer must")
    decision = run_input.get("decision")
    comment = str(run_input.get("comment") or "").strip()
    if decision not in ("approve", "reject"):
        reasons.append(f"decision must be approve or reject, not {decision!r}")
    if not comment:
        reasons.append("a comment is required")
    if reasons:
        return Verdict(reasons=reasons, submitted_by=reviewer)
    now = _now()
    signed = SignedDecision(
        decision_id=uuid.uuid4().hex,
        request_id=request.request_id,
        model=request.model,
        version=request.version,
        flow_run_id=request.flow_run_id,
        evidence_sha256=request.evidence_sha256,
        decision=decision,
        reviewer=reviewer,
        comment=comment,
        decided_at=now.isoformat(),
        valid_until=(now + timedelta(seconds=request.rule.decision_validity_seconds)).isoformat(),
        submitted_input={k: v for k, v in run_input.items() if k != SUBMISSION_FIELD},
        submission=claim,
    )
    signed.sign_with(keyring, "platform", DECISION_DOMAIN)
    return Verdict(decision=signed, submitted_by=reviewer)


def request_problems(record: audit.AuditRecord | None, keyring: KeyRing) -> tuple[RecordedRequest | None, list[str]]:
    """The request of a ``promotion.requested`` record, and what is wrong with it."""
    if record is None or record.event != audit.PROMOTION_REQUESTED:
        return None, ["no promotion request of that id in the audit log"]
    try:
        request = RecordedRequest.model_validate(record.payload.get("request"))
    except ValidationError:
        return None, [f"audit record seq {record.seq} holds no recorded request"]
    if not request.verify_with(keyring, "platform", REQUEST_DOMAIN):
        return request, [f"the request in audit record seq {record.seq} is not signed by the platform"]
    return request, []


def decision_problems(
    record: audit.AuditRecord, records: list[audit.AuditRecord], keyring: KeyRing
) -> tuple[SignedDecision | None, RecordedRequest | None, list[str]]:
    """Re-check an accepted-decision record against its request: the platform's and the gateway's
    signatures, the binding, and the recorded rule. Empty problems: the platform accepted it."""
    if record.event != audit.REVIEW_DECISION_ACCEPTED:
        return None, None, [f"audit record seq {record.seq} is a {record.event}, not an accepted decision"]
    try:
        decision = SignedDecision.model_validate(record.payload.get("decision"))
    except ValidationError:
        return None, None, [f"audit record seq {record.seq} holds no signed decision (appended by hand?)"]
    problems = []
    if not decision.verify_with(keyring, "platform", DECISION_DOMAIN):
        problems.append(f"the decision in audit record seq {record.seq} is not signed by the platform")
    claim = decision.submission
    if not claim.verify_with(keyring, "gateway", SUBMISSION_DOMAIN):
        problems.append(f"the decision in audit record seq {record.seq} has no valid identity claim of the server")
    if claim.account != decision.reviewer or claim.flow_run_id != decision.flow_run_id:
        problems.append(f"the decision in audit record seq {record.seq} names another reviewer or run than its claim")
    if claim.input_sha256 != input_sha256(decision.submitted_input) or (
        decision.submitted_input.get("decision") != decision.decision
        or str(decision.submitted_input.get("comment") or "").strip() != decision.comment
    ):
        problems.append(f"the decision in audit record seq {record.seq} differs from what was submitted")
    request_record = next(
        (
            r
            for r in records
            if r.event == audit.PROMOTION_REQUESTED
            and (r.payload.get("request") or {}).get("request_id") == decision.request_id
        ),
        None,
    )
    request, request_issues = request_problems(request_record, keyring)
    problems += request_issues
    if request is not None and not request_issues:
        bound = (request.version, request.model, request.flow_run_id, request.evidence_sha256)
        if bound != (decision.version, decision.model, decision.flow_run_id, decision.evidence_sha256):
            problems.append(
                f"the decision in audit record seq {record.seq} is bound to another version, run or evidence "
                f"than request {request.request_id[:12]}"
            )
        if claim.account_kind != "user" or decision.reviewer not in request.rule.allowed_reviewers:
            problems.append(f"{decision.reviewer!r} may not review {request.model} under the recorded policy")
        if decision.reviewer == request.requested_by:
            problems.append(f"{decision.reviewer!r} requested the promotion and cannot review it")
    return decision, request, problems


def assignment_problems(
    version: str,
    approvals: list[ApprovalRecord],
    records: list[audit.AuditRecord],
    keyring: KeyRing,
    at: datetime | None = None,
    model: str = "eve",
) -> tuple[list[SignedDecision], RecordedRequest | None, list[str]]:
    """Can ``approvals`` move ``version`` to production at time ``at``? (decisions, request, problems).

    Re-checks every decision at the point of use: an accepted, signed, bound decision of the audit
    log, equal to the approval offered, for this version, not expired, not consumed by an earlier
    assignment, and enough distinct approvals for the request's rule with no accepted rejection.
    """
    at = at or _now()
    if not approvals:
        return [], None, ["no approval given"]
    by_hash = {record.record_hash: record for record in records}
    decisions: list[SignedDecision] = []
    request: RecordedRequest | None = None
    problems: list[str] = []
    for approval in approvals:
        if approval.decision != "approve" or approval.version != version:
            problems.append(f"{approval.decision} of {approval.version} does not approve {version}")
            continue
        record = by_hash.get(approval.audit_record_hash or "")
        if record is None or record.event != audit.REVIEW_DECISION_ACCEPTED:
            problems.append(
                f"no accepted review decision {approval.audit_record_hash or '(none given)'} in the audit log: "
                "production moves only through the approval path"
            )
            continue
        decision, this_request, issues = decision_problems(record, records, keyring)
        problems += issues
        if decision is None or this_request is None:
            continue
        recorded = ApprovalRecord.model_validate(record.payload.get("approval") or {})
        if recorded.model_dump(exclude={"audit_record_hash"}) != approval.model_dump(exclude={"audit_record_hash"}):
            problems.append("the approval differs from the decision recorded in the audit log")
        if decision.version != version or decision.model != model:
            problems.append(f"the decision of audit record seq {record.seq} is for {decision.model}@{decision.version}")
        if decision.decision != "approve":
            problems.append(f"the decision of audit record seq {record.seq} is a rejection")
        if _parse(decision.valid_until) < at:
            problems.append(f"the decision by {decision.reviewer} expired at {decision.valid_until}")
        if request is not None and this_request.request_id != request.request_id:
            problems.append("the approvals belong to different promotion requests")
        request = this_request
        decisions.append(decision)
    if problems or request is None:
        return decisions, request, problems or ["no usable approval"]
    reviewers = {decision.reviewer for decision in decisions}
    if len(reviewers) < request.rule.approvals_needed:
        problems.append(
            f"{len(reviewers)} distinct approval(s); the policy recorded with the request needs "
            f"{request.rule.approvals_needed}"
        )
    for record in records:
        if record.event == audit.REVIEW_DECISION_ACCEPTED:
            other = record.payload.get("decision") or {}
            if other.get("request_id") == request.request_id and other.get("decision") == "reject":
                problems.append(f"the request was rejected by {other.get('reviewer')} (audit record seq {record.seq})")
    consumed = consumed_decisions(records)
    for decision in decisions:
        if decision.decision_id in consumed:
            problems.append(
                f"the decision by {decision.reviewer} was already used for {consumed[decision.decision_id]} (replay)"
            )
    return decisions, request, problems


def record_request(
    request: RecordedRequest, audit_log: audit.AuditLog, requester_chain: list[str] | None = None
) -> audit.AuditRecord:
    """Audit the signed request (the record every decision of it is checked against)."""
    return audit_log.append(
        audit.PROMOTION_REQUESTED,
        actor=request.requested_by,
        subject=request.subject,
        payload={"request": request.model_dump(mode="json"), "requester_chain": requester_chain or []},
    )


def record_verdict(
    verdict: Verdict, request: RecordedRequest, submitted: dict[str, Any], audit_log: audit.AuditLog
) -> ApprovalRecord | None:
    """Audit a judged submission: the refusal with its reasons (None returned), or the accepted
    decision (its approval record returned, linked to the audit record)."""
    if verdict.decision is None:
        audit_log.append(
            audit.REVIEW_DECISION_REFUSED,
            actor=verdict.submitted_by or "unauthenticated",
            subject=request.subject,
            payload={
                "request_id": request.request_id,
                "flow_run_id": request.flow_run_id,
                "reasons": verdict.reasons,
                "submitted": {k: v for k, v in submitted.items() if k != SUBMISSION_FIELD},
                "submission": submitted.get(SUBMISSION_FIELD),
            },
        )
        return None
    decision = verdict.decision
    approval = decision.approval_record(requested_by=request.requested_by)
    record = audit_log.append(
        audit.REVIEW_DECISION_ACCEPTED,
        actor=decision.reviewer,
        subject=request.subject,
        payload={"decision": decision.model_dump(mode="json"), "approval": approval.model_dump(mode="json")},
    )
    return approval.model_copy(update={"audit_record_hash": record.record_hash})


def consumed_decisions(records: list[audit.AuditRecord]) -> dict[str, str]:
    """decision id -> stage tag of the completed assignment that used it."""
    consumed = {}
    for record in records:
        if record.event == audit.PRODUCTION_ASSIGNED:
            for decision_id in record.payload.get("decision_ids") or []:
                consumed[decision_id] = record.payload.get("stage_tag", "?")
    return consumed


__all__ = [
    "DECISION_DOMAIN",
    "REQUEST_DOMAIN",
    "UNATTRIBUTED",
    "RecordedRequest",
    "SignedDecision",
    "Verdict",
    "assignment_problems",
    "consumed_decisions",
    "decision_problems",
    "judge_submission",
    "make_request",
    "record_request",
    "record_verdict",
    "request_problems",
    "used_nonces",
]
