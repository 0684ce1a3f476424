"""Promotion to production: one evidence report, a typed review form, and the approval policy (docs/security.md).

The flow (``flows/promotion_flow.py``) publishes the evidence report as a Prefect markdown artifact,
pauses with a ``ReviewDecision`` form whose description is that report, and checks every submitted
decision against ``ApprovalPolicy`` here, in the platform, not in the form:

- the reviewer is on the allowed list and is not the person who requested the promotion;
- a comment is given, for approvals and rejections alike;
- no valid decision before the deadline means rejection (``timed_out``).

A refused decision is audited and the run pauses again for a valid one until the deadline. Every
request, decision (valid or refused), timeout and assignment goes to the hash-chained audit log.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.input import RunInput
from pydantic import BaseModel, Field

from tasks import audit
from tasks.lineage.render import summarize_lineage_markdown
from tasks.lineage.schema import ApprovalRecord, LineageManifest
from tasks.platform import PlatformSettings
from tasks.registry import ModelRegistry


class ReviewDecision(RunInput):
    """The form a reviewer fills in the Prefect UI (or sends with ``resume_flow_run``)."""

    decision: Literal["approve", "reject"]
    """Approve the candidate for production, or reject it."""

    reviewer: str
    """Your user name; must be on the allowed list and differ from the requester."""

    comment: str = ""
    """Why; required for both outcomes."""


class ApprovalPolicy(BaseModel):
    """Who may approve and how long the platform waits."""

    allowed_reviewers: list[str]
    """User names allowed to decide."""

    timeout_seconds: int = Field(default=3 * 24 * 3600, gt=0)
    """Overall time for a valid decision; after it the promotion is rejected."""

    poll_interval_seconds: int = Field(default=10, gt=0)
    """How often the paused run checks whether it was resumed."""


class SampleGeneration(BaseModel):
    """One generation shown to the reviewer, candidate next to production."""

    image_key: str
    """Key of the image in the evaluation set."""

    prompt: str
    """Question asked."""

    candidate_output: str
    """The candidate's answer."""

    production_output: str | None = None
    """The production model's answer, when there is one."""


class EvidenceInputs(BaseModel):
    """What the evaluation and caption-quality steps measured, to be shown side by side."""

    candidate_metrics: dict[str, float]
    """Benchmark name -> candidate score."""

    production_version: str | None = None
    """Version currently in production (None on the first promotion)."""

    production_metrics: dict[str, float] = Field(default_factory=dict)
    """Benchmark name -> production score."""

    lower_is_better: list[str] = Field(default_factory=list)
    """Metrics where a decrease is an improvement (losses, error rates)."""

    evaluation_gate_markdown: str | None = None
    """The evaluation gate's own table (``GateDecision.to_markdown()``), with CIs, shown as is."""

    caption_quality: dict[str, float] = Field(default_factory=dict)
    """Caption-quality statistics of the candidate's training data."""

    previous_caption_quality: dict[str, float] = Field(default_factory=dict)
    """The same statistics for the previous data version."""

    caption_dataset_hash: str | None = None
    """Dataset version the caption statistics describe."""

    previous_caption_dataset_hash: str | None = None
    """Previous data version."""

    sample_generations: list[SampleGeneration] = Field(default_factory=list)
    """A few generations for a quick look."""


class PromotionRequest(BaseModel):
    """Parameters of one promotion (the ``promote-eve`` flow's only parameter)."""

    candidate_version: str
    """Registered version to promote, e.g. ``v0.2.0``."""

    requested_by: str
    """Who asks for the promotion; may not approve it."""

    evidence: EvidenceInputs
    """Evaluation, caption-quality and sample-generation results to show the reviewer."""

    policy: ApprovalPolicy
    """Allowed reviewers and deadline."""


class EvidenceReport(BaseModel):
    """The markdown shown to the reviewer, and its hash (recorded with the decision)."""

    markdown: str
    sha256: str


class ReviewOutcome(BaseModel):
    """How the review ended."""

    status: Literal["approved", "rejected", "timed_out"]
    """``approved`` moves production; the other two leave it unchanged."""

    approval: ApprovalRecord | None = None
    """The accepted decision (None on timeout)."""

    refused_decisions: int = 0
    """Decisions the policy refused before the outcome."""


# ---------------------------------------------------------------- evidence


def _delta_rows(current: dict[str, float], previous: dict[str, float], lower_is_better: set[str]) -> list[str]:
    rows = []
    for name in sorted(current):
        value = current[name]
        if name not in previous:
            rows.append(f"| {name} | {value:.4g} | – | – | new |")
            continue
        delta = value - previous[name]
        improved = delta < 0 if name in lower_is_better else delta > 0
        verdict = "same" if delta == 0 else ("better" if improved else "**worse**")
        rows.append(f"| {name} | {value:.4g} | {previous[name]:.4g} | {delta:+.4g} | {verdict} |")
    return rows


def build_evidence_report(
    candidate_version: str,
    requested_by: str,
    evidence: EvidenceInputs,
    lineage: LineageManifest | None,
    policy: ApprovalPolicy,
) -> EvidenceReport:
    """One markdown page: evaluation deltas, caption-quality deltas, lineage summary, sample generations."""
    lower = set(evidence.lower_is_better)
    against = evidence.production_version or "no production model yet"
    sections = [
        f"# Promote eve@{candidate_version} to production?",
        f"Requested by **{requested_by}**. Allowed reviewers: {', '.join(policy.allowed_reviewers)} "
        "(not the requester). A comment is required for approval and rejection; no decision before the "
        f"deadline ({policy.timeout_seconds} s) rejects the promotion.",
        f"## Evaluation against production ({against})",
        "| metric | candidate | production | delta | |",
        "|---|---|---|---|---|",
        *_delta_rows(evidence.candidate_metrics, evidence.production_metrics, lower),
        *([evidence.evaluation_gate_markdown] if evidence.evaluation_gate_markdown else []),
        "## Caption quality against the previous data version",
        f"Data `{(evidence.caption_dataset_hash or _quality_dataset(lineage) or '?')[:12]}` vs previous "
        f"`{(evidence.previous_caption_dataset_hash or '?')[:12]}`.",
        "| statistic | current | previous | delta | |",
        "|---|---|---|---|---|",
        *_delta_rows(evidence.caption_quality, evidence.previous_caption_quality, lower),
        "## Lineage",
        summarize_lineage_markdown(lineage) if lineage else "_no lineage manifest found_",
        "## Sample generations",
        "| image | prompt | candidate | production |",
        "|---|---|---|---|",
        *[
            f"| {s.image_key} | {_cell(s.prompt)} | {_cell(s.candidate_output)} | {_cell(s.production_output or '–')} |"
            for s in evidence.sample_generations
        ],
    ]
    markdown = _join_sections(sections)
    return EvidenceReport(markdown=markdown, sha256=hashlib.sha256(markdown.encode("utf-8")).hexdigest())


def _quality_dataset(lineage: LineageManifest | None) -> str | None:
    return lineage.quality.dataset_hash if lineage and lineage.quality else None


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _join_sections(parts: list[str]) -> str:
    # Table rows stay on consecutive lines; everything else is its own paragraph.
    out: list[str] = []
    for part in parts:
        if out and part.startswith("|") and out[-1].startswith("|"):
            out[-1] += "\n" + part
        else:
            out.append(part)
    return "\n\n".join(out) + "\n"


# ---------------------------------------------------------------- policy


def check_review_decision(decision: ReviewDecision, policy: ApprovalPolicy, requested_by: str) -> list[str]:
    """Reasons the policy refuses ``decision``; empty when it is valid."""
    reasons = []
    reviewer = decision.reviewer.strip()
    if reviewer not in policy.allowed_reviewers:
        reasons.append(f"reviewer {reviewer!r} is not on the allowed list")
    if reviewer.casefold() == requested_by.strip().casefold():
        reasons.append(f"{reviewer!r} requested this promotion and cannot review it")
    if not decision.comment.strip():
        reasons.append("a comment is required")
    return reasons


def collect_review_decision(
    candidate_version: str,
    requested_by: str,
    report: EvidenceReport,
    policy: ApprovalPolicy,
    audit_log: audit.AuditLog | None = None,
) -> ReviewOutcome:
    """Pause the current flow run for a ``ReviewDecision`` until one passes the policy or the deadline passes.

    Must run inside a flow run (it calls ``pause_flow_run``). Every decision and the timeout are audited.
    """
    from prefect.context import FlowRunContext
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    audit_log = audit_log or audit.AuditLog.default()
    context = FlowRunContext.get()
    flow_run_id = str(context.flow_run.id) if context and context.flow_run else None
    subject = f"eve@{candidate_version}"
    deadline = time.monotonic() + policy.timeout_seconds
    refused = 0
    notice = ""
    while (remaining := int(deadline - time.monotonic())) > 0:
        form = ReviewDecision.with_initial_data(description=notice + report.markdown, decision="reject", comment="")
        try:
            decision = pause_flow_run(
                wait_for_input=form, timeout=remaining, poll_interval=policy.poll_interval_seconds
            )
        except FlowPauseTimeout:
            break
        submitted = ReviewDecision.model_validate(decision.model_dump())
        reasons = check_review_decision(submitted, policy, requested_by)
        if reasons:
            refused += 1
            audit_log.append(
                audit.REVIEW_DECISION_REFUSED,
                actor=submitted.reviewer,
                subject=subject,
                payload={
                    "decision": submitted.model_dump(),
                    "reasons": reasons,
                    "flow_run_id": flow_run_id,
                    "evidence_sha256": report.sha256,
                },
            )
            notice = f"> **Decision by {submitted.reviewer!r} refused:** {'; '.join(reasons)}. Submit a valid one.\n\n"
            continue
        approval = ApprovalRecord(
            version=candidate_version,
            decision=submitted.decision,
            reviewer=submitted.reviewer.strip(),
            comment=submitted.comment.strip(),
            decided_at=datetime.now(timezone.utc).isoformat(),
            evidence_sha256=report.sha256,
            requested_by=requested_by,
            flow_run_id=flow_run_id,
        )
        record = audit_log.append(
            audit.REVIEW_DECISION_ACCEPTED,
            actor=approval.reviewer,
            subject=subject,
            payload={"approval": approval.model_dump()},
        )
        approval.audit_record_hash = record.record_hash
        if approval.decision == "reject":
            audit_log.append(
                audit.PROMOTION_REJECTED,
                actor=approval.reviewer,
                subject=subject,
                payload={"reason": "rejected by reviewer", "decision_record_hash": record.record_hash},
            )
            return ReviewOutcome(status="rejected", approval=approval, refused_decisions=refused)
        return ReviewOutcome(status="approved", approval=approval, refused_decisions=refused)

    audit_log.append(
        audit.REVIEW_TIMED_OUT,
        actor="platform",
        subject=subject,
        payload={"timeout_seconds": policy.timeout_seconds, "refused_decisions": refused, "flow_run_id": flow_run_id},
    )
    audit_log.append(
        audit.PROMOTION_REJECTED,
        actor="platform",
        subject=subject,
        payload={"reason": "no valid decision before the deadline"},
    )
    return ReviewOutcome(status="timed_out", refused_decisions=refused)


# ---------------------------------------------------------------- Prefect tasks (thin wrappers)


@task(name="record-promotion-request")
def record_promotion_request(candidate_version: str, requested_by: str, policy: ApprovalPolicy) -> str:
    """Audit the request; returns the record hash."""
    from prefect.runtime import flow_run

    record = audit.AuditLog.default().append(
        audit.PROMOTION_REQUESTED,
        actor=requested_by,
        subject=f"eve@{candidate_version}",
        payload={"policy": policy.model_dump(), "flow_run_id": flow_run.id},
    )
    return record.record_hash


@task(name="load-lineage")
def load_lineage(candidate_version: str) -> LineageManifest:
    """The candidate's lineage manifest from the registry."""
    return ModelRegistry(PlatformSettings.load()).lineage(candidate_version)


@task(name="publish-evidence-report")
def publish_evidence_report(
    candidate_version: str,
    requested_by: str,
    evidence: EvidenceInputs,
    lineage: LineageManifest | None,
    policy: ApprovalPolicy,
) -> EvidenceReport:
    """Build the evidence report and publish it as a markdown artifact (key ``evidence-eve-<version>``)."""
    report = build_evidence_report(candidate_version, requested_by, evidence, lineage, policy)
    create_markdown_artifact(
        key=f"evidence-eve-{candidate_version.replace('.', '-')}",
        markdown=report.markdown + f"\n\n_evidence sha256 `{report.sha256}`_\n",
        description=f"Evidence for promoting eve@{candidate_version}",
    )
    return report


@task(name="publish-lineage")
def publish_lineage(lineage: LineageManifest) -> None:
    """Publish the lineage summary as a markdown artifact (key ``lineage-eve-<version>``)."""
    create_markdown_artifact(
        key=f"lineage-eve-{(lineage.version or 'unregistered').replace('.', '-')}",
        markdown=f"# Lineage of {lineage.ref}\n\n{summarize_lineage_markdown(lineage)}\n",
        description=f"Lineage manifest of {lineage.ref}",
    )


PROMOTION_DEPLOYMENT = "promote-eve/promote"
"""The deployment (``prefect.yaml``) that runs a promotion on the platform's worker."""


@task(name="start-promotion", retries=2, retry_delay_seconds=10)
def start_promotion(request: PromotionRequest) -> str:
    """Create the promotion's flow run on ``PROMOTION_DEPLOYMENT`` and return its id at once.

    The run waits days for a reviewer; a worker owns it (the local default: the process worker
    ``eve server`` starts), so the retrain that asked for it can finish. Linked to the calling run
    in the UI as its child.
    """
    from prefect.deployments import run_deployment

    flow_run = run_deployment(
        PROMOTION_DEPLOYMENT,
        parameters={"request": request.model_dump(mode="json")},
        flow_run_name=f"promote-eve@{request.candidate_version}",  # the flow's own name template, set at once
        timeout=0,
    )
    return str(flow_run.id)


@task(name="assign-production")
def assign_production(candidate_version: str, approval: ApprovalRecord) -> str:
    """Move the production stage to the approved version; returns the stage tag."""
    return ModelRegistry(PlatformSettings.load()).assign_production(candidate_version, approval)


__all__ = [
    "ApprovalPolicy",
    "EvidenceInputs",
    "EvidenceReport",
    "PROMOTION_DEPLOYMENT",
    "PromotionRequest",
    "ReviewDecision",
    "ReviewOutcome",
    "SampleGeneration",
    "assign_production",
    "build_evidence_report",
    "check_review_decision",
    "collect_review_decision",
    "load_lineage",
    "publish_evidence_report",
    "publish_lineage",
    "record_promotion_request",
    "start_promotion",
]
