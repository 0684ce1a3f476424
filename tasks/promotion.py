"""Promotion to production: the evidence report, the authenticated review, the policy (docs/security.md).

The flow (``flows/promotion_flow.py``) works out who asked (:func:`resolve_requester`: the account the
platform's server authenticated when the run, or the run that started it, was created; never a
parameter), reads the review rule from the platform's policy (``tasks/policy.py``; never a
parameter), publishes one evidence report as a Prefect markdown artifact, records the signed request
(``tasks/approvals.py``), and pauses with a ``ReviewDecision`` form whose description is that report.

Each submitted decision carries the server's signed claim of the account that submitted it
(``tasks/gateway.py``); the platform judges it (allowed ``user`` account, not the requester, comment
given, not replayed, before the deadline, distinct reviewers up to the rule's number of approvals).
A refused decision is audited with its reasons, shown at the top of the form and in the run's logs,
and the run pauses again. No valid decision before the deadline means rejection. The wait survives a
restart of the Prefect server: the run stays paused there and the decision submitted meanwhile is
read once the server answers again (:func:`wait_for_review_input`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Literal
from uuid import UUID

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.input import RunInput
from pydantic import BaseModel, ConfigDict, Field

from tasks import audit
from tasks.approvals import (
    UNATTRIBUTED,
    RecordedRequest,
    SignedDecision,
    judge_submission,
    make_request,
    record_request,
    record_verdict,
    used_nonces,
)
from tasks.gateway import verify_creator
from tasks.lineage.render import summarize_lineage_markdown
from tasks.lineage.schema import ApprovalRecord, LineageManifest
from tasks.platform import PlatformSettings
from tasks.policy import ReviewRule, load_policy
from tasks.registry import MODEL_NAME, ApprovalRequiredError, ModelRegistry, RegistryError
from tasks.signing import KeyRing

logger = logging.getLogger("eve.promotion")


class ReviewDecision(RunInput):
    """The form a reviewer fills in the Prefect UI (or sends with ``eve promote approve``). Who decides
    is not a field: it is the account you logged in with."""

    model_config = ConfigDict(extra="ignore")  # the server's identity claim rides along; see tasks/gateway.py

    decision: Literal["approve", "reject"]
    """Approve the candidate for production, or reject it."""

    comment: str = ""
    """Why; required for both outcomes."""


class ApprovalPolicy(BaseModel):
    """Deprecated and ignored: the policy is platform configuration (``eve policy set``,
    ``tasks/policy.py``). Kept so that older parameter sets still validate."""

    allowed_reviewers: list[str] = Field(default_factory=list)
    """Ignored."""

    timeout_seconds: int = Field(default=3 * 24 * 3600, gt=0)
    """Ignored."""

    poll_interval_seconds: int = Field(default=10, gt=0)
    """Ignored."""


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
    """Parameters of one promotion (the ``promote-eve`` flow's only parameter): what to promote and the
    evidence. Who asks and who may approve are not parameters."""

    candidate_version: str
    """Registered version to promote, e.g. ``v0.2.0`` (a version that held production before: a rollback)."""

    evidence: EvidenceInputs
    """Evaluation, caption-quality and sample-generation results to show the reviewer."""

    requested_by: str | None = None
    """Ignored: the requester is the authenticated account that started the run (kept for older callers)."""

    policy: ApprovalPolicy | None = None
    """Ignored: the policy is platform configuration (kept for older callers)."""


class EvidenceReport(BaseModel):
    """The markdown shown to the reviewer, and its hash (recorded with the request and every decision)."""

    markdown: str
    sha256: str


class Requester(BaseModel):
    """Who asked for a promotion, as the platform's server authenticated it."""

    name: str
    """The account (``unattributed`` for runs that Prefect's scheduler or triggers created)."""

    kind: str
    """``user``, ``service``, ``worker`` or ``unattributed``."""

    chain: list[str] = Field(default_factory=list)
    """How it was found: the runs walked up from the promotion to the one a non-worker account created."""


class PromotionContext(BaseModel):
    """What the platform, not the caller, decides about a promotion before anyone reviews it."""

    model: str
    version: str
    kind: Literal["promotion", "rollback"]
    """``rollback`` when the version held production before."""

    requester: Requester
    rule: ReviewRule
    """The platform policy's rule for the model."""

    policy_sha256: str
    poll_interval_seconds: int


class ReviewOutcome(BaseModel):
    """How the review ended."""

    status: Literal["approved", "rejected", "timed_out"]
    """``approved`` moves production; the other two leave it unchanged."""

    approval: ApprovalRecord | None = None
    """The last accepted decision (the rejection when rejected; None on timeout)."""

    approvals: list[ApprovalRecord] = Field(default_factory=list)
    """Every accepted approval (as many as the rule needs when approved)."""

    refused_decisions: int = 0
    """Decisions the platform refused before the outcome."""

    request_id: str | None = None
    """The recorded request the decisions are bound to."""

    requested_by: str | None = None
    """The authenticated requester."""


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
    rule: ReviewRule,
    kind: Literal["promotion", "rollback"] = "promotion",
) -> EvidenceReport:
    """One markdown page: who asked and under which rule, evaluation deltas, caption-quality deltas,
    lineage summary, sample generations."""
    lower = set(evidence.lower_is_better)
    against = evidence.production_version or "no production model yet"
    title = "Roll production back to" if kind == "rollback" else "Promote"
    sections = [
        f"# {title} eve@{candidate_version} to production?",
        *(["This version held production before: approving it is a **rollback**."] if kind == "rollback" else []),
        f"Requested by **{requested_by}** (the authenticated account that started it). Allowed reviewers: "
        f"{', '.join(rule.allowed_reviewers)}, never the requester; {rule.approvals_needed} distinct "
        f"approval(s) needed. Decide while logged in as yourself: the platform records your account, not a "
        f"typed name. A comment is required for approval and rejection; no decision within "
        f"{rule.decision_timeout_seconds} s rejects the promotion.",
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


# ---------------------------------------------------------------- who asked, under which rule


def resolve_requester(flow_run_id: str | UUID, keyring: KeyRing | None = None, max_depth: int = 16) -> Requester:
    """The account that asked for the promotion running as ``flow_run_id``.

    The server labels every run it sees created with the creator's account, signed
    (``tasks/gateway.py``). A run created by a ``worker`` account (the retrain's hand-over, a subflow
    of a run the worker executes) is attributed to whoever created the run it came from, walking up
    the parent runs; a run without a valid label was created inside the Prefect server (a schedule or
    trigger) and is ``unattributed``.
    """
    from prefect import get_client

    keyring = keyring or KeyRing.default()
    chain: list[str] = []
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(str(flow_run_id)))
        for _ in range(max_depth):
            claim = verify_creator(run.labels, str(run.id), keyring)
            if claim is None:
                chain.append(f"{run.name}: no valid creator label (created inside the Prefect server)")
                return Requester(name=UNATTRIBUTED, kind=UNATTRIBUTED, chain=chain)
            chain.append(f"{run.name}: created by {claim.account} ({claim.account_kind})")
            if claim.account_kind == "worker" and run.parent_task_run_id:
                parent_task = client.read_task_run(run.parent_task_run_id)
                run = client.read_flow_run(parent_task.flow_run_id)
                continue
            return Requester(name=claim.account, kind=claim.account_kind, chain=chain)
    return Requester(name=UNATTRIBUTED, kind=UNATTRIBUTED, chain=[*chain, "too many parent runs"])


# ---------------------------------------------------------------- the wait that survives a server restart

OUTAGE_POLL_SECONDS = 2.0
PAUSE_EXPIRY_MARGIN_SECONDS = 600
"""How long after the review deadline the server itself would expire the pause (only if this run died)."""
OUTAGE_GRACE = timedelta(hours=1)
"""After the deadline, how long closing or reading a review still waits out a server outage."""


def _is_outage(error: BaseException) -> bool:
    import httpx

    if isinstance(error, httpx.TransportError):
        return True
    return isinstance(error, httpx.HTTPStatusError) and error.response.status_code >= 500


def _warn(message: str) -> None:
    # In the run's logs (and its console) when inside a run; the module's logger otherwise.
    try:
        from prefect.logging import get_run_logger

        get_run_logger().warning(message)
    except Exception:  # noqa: BLE001 (no run context)
        logger.warning(message)


def _through_outages(call, deadline: datetime, what: str):
    """``call()``, retried while the Prefect server cannot be reached (a restart), until ``deadline``."""
    announced = False
    while True:
        try:
            result = call()
        except Exception as error:  # noqa: BLE001 (narrowed by _is_outage)
            if not _is_outage(error) or datetime.now(timezone.utc) >= deadline:
                raise
            if not announced:
                _warn(f"the Prefect server is unreachable while {what} ({type(error).__name__}); waiting for it")
                announced = True
            time.sleep(OUTAGE_POLL_SECONDS)
            continue
        if announced:
            _warn(f"the Prefect server answers again; {what} goes on")
        return result


def wait_for_review_input(
    form: type[RunInput], key: str, deadline: datetime, poll_interval_seconds: int
) -> dict[str, Any] | None:
    """Pause the current flow run for ``form`` and return the submitted input as sent (a dict), or None
    when ``deadline`` passes first.

    Prefect's ``pause_flow_run`` fails the run on the first poll the server does not answer; this wait
    keeps polling through a server restart. The paused state and a decision submitted meanwhile are
    in the server's database, so nothing is lost: the run stays paused, or finds its input once the
    server is back. At the deadline the run leaves the paused state, so a late decision is refused
    by the server instead of being lost.
    """
    from prefect import get_client
    from prefect.context import FlowRunContext
    from prefect.exceptions import ObjectNotFound
    from prefect.input.run_input import keyset_from_paused_state
    from prefect.states import Paused, Running
    from prefect.utilities.engine import propose_state_sync

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise RuntimeError("a review can only be collected inside a flow run")
    run_id = context.flow_run.id
    remaining = max(1, int((deadline - datetime.now(timezone.utc)).total_seconds()))
    # The server's pause-expiration service fails a run whose pause timed out; the deadline is this
    # loop's to enforce (it leaves the pause and records the timeout), so the server's comes later.
    proposed = Paused(timeout_seconds=remaining + PAUSE_EXPIRY_MARGIN_SECONDS, reschedule=False, pause_key=key)
    keyset = keyset_from_paused_state(proposed)
    proposed.state_details.run_input_keyset = keyset

    def propose():
        with get_client(sync_client=True) as client:
            return propose_state_sync(client, proposed, flow_run_id=run_id)

    state = _through_outages(propose, deadline, "pausing for a review")
    if state.is_paused():
        _through_outages(lambda: form.save(keyset, flow_run_id=run_id), deadline, "publishing the review form")

    def read_input() -> dict[str, Any]:
        with get_client(sync_client=True) as client:
            try:
                raw = client.read_flow_run_input(run_id, keyset["response"])
            except ObjectNotFound:
                return {}
        value = json.loads(raw) if isinstance(raw, str) else raw
        return value if isinstance(value, dict) else {}

    def read_state():
        with get_client(sync_client=True) as client:
            return client.read_flow_run(run_id).state

    while not state.is_running():
        if state.is_final():
            raise RuntimeError(f"the promotion run was set to {state.type.value} while it waited for a review")
        if datetime.now(timezone.utc) >= deadline:
            def leave_pause():
                with get_client(sync_client=True) as client:
                    client.set_flow_run_state(run_id, Running(), force=True)

            _through_outages(leave_pause, deadline + OUTAGE_GRACE, "closing the review")
            return None
        time.sleep(poll_interval_seconds)
        state = _through_outages(read_state, deadline + OUTAGE_GRACE, "waiting for a review")
    return _through_outages(read_input, deadline + OUTAGE_GRACE, "reading the review")


# ---------------------------------------------------------------- collecting decisions


def collect_review_decisions(
    request: RecordedRequest,
    report: EvidenceReport,
    poll_interval_seconds: int = 10,
    audit_log: audit.AuditLog | None = None,
) -> ReviewOutcome:
    """Pause for decisions until the request's rule is met, a reviewer rejects, or the deadline passes.

    Must run inside the flow run of ``request``. Every submission is judged by
    ``tasks.approvals.judge_submission`` and audited, accepted or refused; a refusal's reasons are
    shown at the top of the next form and in the run's logs.
    """
    from prefect.logging import get_run_logger

    run_logger = get_run_logger()
    audit_log = audit_log or audit.AuditLog.default()
    keyring = audit_log.keyring
    deadline = datetime.fromisoformat(request.decide_by)
    approvals: list[ApprovalRecord] = []
    refused = 0
    notice = ""
    attempt = 0
    while datetime.now(timezone.utc) < deadline:
        attempt += 1
        needed = request.rule.approvals_needed
        progress = f"> {len(approvals)} of {needed} approvals so far.\n\n" if needed > 1 else ""
        form = ReviewDecision.with_initial_data(
            description=notice + progress + report.markdown, decision="reject", comment=""
        )
        submitted = wait_for_review_input(
            form, f"review-{request.request_id[:12]}-{attempt}", deadline, poll_interval_seconds
        )
        if submitted is None:
            break
        verdict = judge_submission(
            submitted, request, [a.reviewer for a in approvals], used_nonces(audit_log.records()), keyring
        )
        approval = record_verdict(verdict, request, submitted, audit_log)
        if approval is None:
            refused += 1
            who = verdict.submitted_by or "unauthenticated"
            notice = f"> **Decision by {who!r} refused:** {'; '.join(verdict.reasons)}. Submit a valid one.\n\n"
            run_logger.warning("decision by %r refused: %s", who, "; ".join(verdict.reasons))
            continue
        decision: SignedDecision = verdict.decision
        run_logger.info("decision %s by %s accepted", decision.decision, decision.reviewer)
        if decision.decision == "reject":
            audit_log.append(
                audit.PROMOTION_REJECTED,
                actor=decision.reviewer,
                subject=request.subject,
                payload={"request_id": request.request_id, "reason": "rejected by reviewer",
                         "decision_record_hash": approval.audit_record_hash},
            )
            return ReviewOutcome(status="rejected", approval=approval, approvals=approvals, refused_decisions=refused,
                                 request_id=request.request_id, requested_by=request.requested_by)
        approvals.append(approval)
        if len({a.reviewer for a in approvals}) >= needed:
            return ReviewOutcome(status="approved", approval=approval, approvals=approvals, refused_decisions=refused,
                                 request_id=request.request_id, requested_by=request.requested_by)
        notice = f"> Approved by {', '.join(a.reviewer for a in approvals)}; another reviewer must approve too.\n\n"

    audit_log.append(
        audit.REVIEW_TIMED_OUT,
        actor="platform",
        subject=request.subject,
        payload={"request_id": request.request_id, "decide_by": request.decide_by, "refused_decisions": refused,
                 "approvals": len(approvals), "flow_run_id": request.flow_run_id},
    )
    audit_log.append(
        audit.PROMOTION_REJECTED,
        actor="platform",
        subject=request.subject,
        payload={"request_id": request.request_id, "reason": "no valid decision before the deadline"},
    )
    return ReviewOutcome(status="timed_out", approvals=approvals, refused_decisions=refused,
                         request_id=request.request_id, requested_by=request.requested_by)


def evidence_from_registry(version: str, registry: ModelRegistry | None = None) -> EvidenceInputs:
    """Evidence for promoting an already registered version (a rollback, ``eve promote request``):
    its recorded evaluation against the current production's, and its caption-quality statistics."""
    registry = registry or ModelRegistry.default()
    lineage = registry.lineage(version)
    production = registry.production_version()
    production_lineage = registry.lineage(production) if production else None
    return EvidenceInputs(
        candidate_metrics=dict(lineage.evaluation.metrics) if lineage.evaluation else {},
        production_version=production,
        production_metrics=dict(production_lineage.evaluation.metrics)
        if production_lineage and production_lineage.evaluation else {},
        caption_quality={k: v for k, v in (lineage.quality.statistics if lineage.quality else {}).items()
                         if isinstance(v, (int, float))},
        caption_dataset_hash=lineage.quality.dataset_hash if lineage.quality else None,
    )


def complete_promotion(version: str, registry: ModelRegistry | None = None) -> str:
    """Finish an approved promotion of ``version`` whose flow run died before or during its assignment:
    complete or roll back an interrupted step, then assign with the latest request's accepted approvals
    (re-checked as always: unused, unexpired). Returns the stage tag."""
    registry = registry or ModelRegistry.default()
    registry.recover()
    records = registry.audit_log.records()
    requests = [
        r for r in records
        if r.event == audit.PROMOTION_REQUESTED and (r.payload.get("request") or {}).get("version") == version
    ]
    if not requests:
        raise RegistryError(f"no promotion of {version} was requested")
    request_id = requests[-1].payload["request"]["request_id"]
    approvals = [
        ApprovalRecord.model_validate({**r.payload["approval"], "audit_record_hash": r.record_hash})
        for r in records
        if r.event == audit.REVIEW_DECISION_ACCEPTED
        and (r.payload.get("decision") or {}).get("request_id") == request_id
        and (r.payload.get("decision") or {}).get("decision") == "approve"
    ]
    if not approvals:
        raise RegistryError(f"the latest promotion request of {version} has no accepted approval")
    return registry.assign_production(version, approvals)


# ---------------------------------------------------------------- Prefect tasks (thin wrappers)


@task(name="prepare-promotion")
def prepare_promotion(request: PromotionRequest) -> PromotionContext:
    """The authenticated requester and the platform policy's rule (what a caller cannot choose)."""
    from prefect.logging import get_run_logger
    from prefect.runtime import flow_run

    if request.requested_by or request.policy:
        get_run_logger().warning(
            "PromotionRequest.requested_by and .policy are ignored: the requester is the authenticated account "
            "that started the run, the policy is the platform's (`eve policy show`)"
        )
    settings = PlatformSettings.load()
    keyring = KeyRing.default(settings)
    policy = load_policy(settings, keyring)
    requester = resolve_requester(flow_run.id, keyring)
    version = request.candidate_version
    return PromotionContext(
        model=MODEL_NAME,
        version=version,
        kind="rollback" if ModelRegistry(settings).held_production(version) else "promotion",
        requester=requester,
        rule=policy.rule_for(MODEL_NAME),
        policy_sha256=policy.sha256(),
        poll_interval_seconds=policy.poll_interval_seconds,
    )


@task(name="record-promotion-request")
def record_promotion_request(context: PromotionContext, report: EvidenceReport) -> RecordedRequest:
    """Sign and audit the request (version, evidence hash, this run, requester, rule, deadline)."""
    from prefect.runtime import flow_run

    log = audit.AuditLog.default()
    request = make_request(
        model=context.model,
        version=context.version,
        kind=context.kind,
        flow_run_id=flow_run.id,
        requested_by=context.requester.name,
        requester_kind=context.requester.kind,
        evidence_sha256=report.sha256,
        rule=context.rule,
        policy_sha256=context.policy_sha256,
        keyring=log.keyring,
    )
    record_request(request, log, context.requester.chain)
    return request


@task(name="load-lineage")
def load_lineage(candidate_version: str) -> LineageManifest:
    """The candidate's lineage manifest from the registry."""
    return ModelRegistry(PlatformSettings.load()).lineage(candidate_version)


@task(name="publish-evidence-report")
def publish_evidence_report(
    context: PromotionContext, evidence: EvidenceInputs, lineage: LineageManifest | None
) -> EvidenceReport:
    """Build the evidence report and publish it as a markdown artifact (key ``evidence-eve-<version>``)."""
    report = build_evidence_report(context.version, context.requester.name, evidence, lineage, context.rule,
                                   context.kind)
    create_markdown_artifact(
        key=f"evidence-eve-{context.version.replace('.', '-')}",
        markdown=report.markdown + f"\n\n_evidence sha256 `{report.sha256}`_\n",
        description=f"Evidence for promoting eve@{context.version}",
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
    in the UI as its child, so its requester is whoever started that run.
    """
    from prefect.deployments import run_deployment

    flow_run = run_deployment(
        PROMOTION_DEPLOYMENT,
        parameters={"request": request.model_dump(mode="json", exclude_none=True)},
        flow_run_name=f"promote-eve@{request.candidate_version}",  # the flow's own name template, set at once
        timeout=0,
    )
    return str(flow_run.id)


def _retry_unless_refused(task, task_run, state) -> bool:
    """Retry a registry write that failed (a lock timeout, a push); never one the approvals refused."""
    try:
        state.result()
    except ApprovalRequiredError:
        return False
    except Exception:  # noqa: BLE001 (anything else may pass on a retry)
        return True
    return True


@task(name="assign-production", retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_unless_refused)
def assign_production(candidate_version: str, approvals: list[ApprovalRecord]) -> str:
    """Move the production stage to the approved version (re-checked at the point of use); returns the
    stage tag. A retry after an interruption completes the same step."""
    return ModelRegistry(PlatformSettings.load()).assign_production(candidate_version, approvals)


@task(name="anchor-audit-head", retries=2, retry_delay_seconds=5)
def anchor_audit_head() -> str | None:
    """Anchor the audit head in the registry (a rejected or timed-out promotion leaves no stage tag)."""
    return ModelRegistry(PlatformSettings.load()).anchor_audit_head()


__all__ = [
    "ApprovalPolicy",
    "EvidenceInputs",
    "EvidenceReport",
    "PROMOTION_DEPLOYMENT",
    "PromotionContext",
    "PromotionRequest",
    "Requester",
    "ReviewDecision",
    "ReviewOutcome",
    "SampleGeneration",
    "anchor_audit_head",
    "assign_production",
    "build_evidence_report",
    "collect_review_decisions",
    "complete_promotion",
    "evidence_from_registry",
    "load_lineage",
    "prepare_promotion",
    "publish_evidence_report",
    "publish_lineage",
    "record_promotion_request",
    "resolve_requester",
    "start_promotion",
    "wait_for_review_input",
]
