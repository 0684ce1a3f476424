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
from prefect.artifacts import create_link_artifact, create_markdown_artifact
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
from tasks.evaluate.gates import GateCheck, GateDecision
from tasks.lineage.render import summarize_lineage_markdown
from tasks.lineage.schema import ApprovalRecord, LineageManifest
from tasks.platform import PlatformSettings
from tasks.policy import ReviewRule, load_policy
from tasks.registry import MODEL_NAME, ApprovalRequiredError, ModelRegistry, RegistryError
from tasks.signing import KeyRing, SignedModel

logger = logging.getLogger("eve.promotion")


class ReviewDecision(RunInput):
    """The form a reviewer fills in the Prefect UI (or sends with ``eve promote approve``). Who decides
    is not a field: it is the account you logged in with. Both fields are required in the form's schema
    (no default is filled in: a reviewer chooses); a blank comment still reaches the platform, which
    refuses it with its reason (``tasks.approvals.judge_submission``)."""

    model_config = ConfigDict(extra="ignore")  # the server's identity claim rides along; see tasks/gateway.py

    decision: Literal["approve", "reject"] = Field(
        title="Decision", description="Approve the candidate for production, or reject it.")
    """Approve the candidate for production, or reject it."""

    comment: str = Field(title="Comment", description="Why: required for approval and rejection.")
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
    """One generation shown to the reviewer, candidate next to production (``tasks.evaluate.review_samples``)."""

    image_key: str
    """Key of the image in the evaluation set."""

    prompt: str
    """Question asked."""

    candidate_output: str
    """The candidate's answer."""

    production_output: str | None = None
    """The production model's answer, when there is one."""

    reference: str | None = None
    """The right answer."""

    question_type: str | None = None
    """The question's type (colour, count...)."""

    candidate_score: float | None = None
    """The candidate's score on it (1 = right)."""

    image_data_uri: str | None = None
    """The image as a small PNG ``data:`` URI, rendered in the review form."""


class ContaminationSummary(BaseModel):
    """What the contamination check (``tasks.evaluate.contamination``) found, for the review form."""

    num_eval_images: int
    """Evaluation images checked."""

    num_train_images: int
    """Training images they were compared with."""

    num_contaminated_images: int
    """Evaluation images found in the training data (exactly or nearly)."""

    exact_matches: int = 0
    """Byte- or pixel-identical pairs."""

    near_duplicates: int = 0
    """Pairs at or above the teacher-embedding cosine threshold."""

    near_duplicate_threshold: float | None = None
    """That threshold (None: near duplicates not checked)."""

    max_cosine: float | None = None
    """The closest evaluation-training pair's cosine."""

    ngram_n: int = 8
    """Word n-gram length of the reference-text overlap check."""

    eval_texts_checked: int = 0
    """References long enough for it."""

    ngram_overlap_rate: float | None = None
    """Share of them that overlap training text."""

    @classmethod
    def from_report(cls, report: Any) -> "ContaminationSummary":
        """From a ``tasks.evaluate.contamination.ContaminationReport``."""
        return cls(
            num_eval_images=report.num_eval_images, num_train_images=report.num_train_images,
            num_contaminated_images=report.num_contaminated_images,
            exact_matches=len(report.exact_byte_matches) + len(report.exact_pixel_matches),
            near_duplicates=len(report.near_duplicates), near_duplicate_threshold=report.near_duplicate_threshold,
            max_cosine=report.max_cosine, ngram_n=report.ngram_n, eval_texts_checked=report.eval_texts_checked,
            ngram_overlap_rate=report.ngram_overlap_rate,
        )


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
    """The evaluation gate's own table (``GateDecision.to_markdown()``), with CIs, shown as is (used
    when ``gate`` is not given)."""

    gate: GateDecision | None = None
    """The evaluation gate's decision: every rule's threshold or limit, the candidate's value, CI,
    sample size and verdict."""

    baselines: dict[str, dict[str, float]] = Field(default_factory=dict)
    """Metric -> {baseline name -> score} (``tasks.evaluate.baselines``: uniform chance, most common answer)."""

    before_sft_metrics: dict[str, float] = Field(default_factory=dict)
    """The same metrics of the model before SFT (the stage-2 checkpoint): what SFT added."""

    production_approval: str | None = None
    """How the production model got there: who approved it, when, why."""

    contamination: ContaminationSummary | None = None
    """The contamination check of the evaluation set against the training data."""

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


class OriginRun(BaseModel):
    """The flow run a promotion came from (the retrain that requested it)."""

    flow_run_id: str
    name: str
    """E.g. ``retrain-demo-20261203-101500``."""
    flow_name: str
    """E.g. ``eve-retrain``."""


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
    origin: OriginRun | None = None
    """The run that requested the promotion (None: requested from the terminal or the API)."""


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


VERDICT_DOMAIN = "eve-review-verdict/1"
"""Signature domain of a published ``ReviewVerdict``."""


class ReviewVerdict(SignedModel):
    """What the platform made of one submitted decision, published on the run (flow run input
    ``<pause key>-verdict``) and signed with the platform key, so whoever sent it learns the outcome:
    ``eve promote approve`` waits for it and exits non-zero with the reasons of a refusal. The audit
    log stays the record; this is its answer to the sender."""

    flow_run_id: str
    """The promotion run."""
    pause_key: str
    """The pause (form) the decision was submitted to."""
    account: str | None = None
    """The authenticated account that submitted it (None when the claim did not verify)."""
    accepted: bool
    """Whether the platform accepted the decision."""
    decision: str | None = None
    """``approve`` or ``reject`` as submitted."""
    reasons: list[str] = Field(default_factory=list)
    """Why it was refused (empty when accepted)."""
    status: str
    """Where the promotion stands after it: ``approved``, ``rejected`` or ``waiting`` (for more approvals,
    or for a valid decision after a refusal)."""
    judged_at: str
    """UTC time of the judgement, ISO 8601."""
    audit_record_hash: str | None = None
    """The accepted decision's audit record (None for a refusal)."""


def verdict_key(pause_key: str) -> str:
    """The flow run input key a verdict on the decision submitted to ``pause_key`` is published under."""
    return f"{pause_key}-verdict"


def publish_verdict(verdict: ReviewVerdict, keyring: KeyRing) -> None:
    """Sign ``verdict`` and store it on its run; a failure is logged (the audit log has the outcome)."""
    from prefect.input import create_flow_run_input

    verdict.sign_with(keyring, "platform", VERDICT_DOMAIN)
    try:
        create_flow_run_input(key=verdict_key(verdict.pause_key), value=verdict.model_dump(mode="json"),
                              flow_run_id=UUID(verdict.flow_run_id))
    except Exception as error:  # noqa: BLE001 - the sender then reads the audit log instead
        _warn(f"verdict on the decision to {verdict.pause_key} not published: {type(error).__name__}: {error}")


def read_verdict(flow_run_id: str | UUID, pause_key: str) -> ReviewVerdict | None:
    """The platform's verdict on the decision submitted to ``pause_key``, once published (check it with
    :func:`verdict_signed`)."""
    from prefect.input import read_flow_run_input

    raw = read_flow_run_input(key=verdict_key(pause_key), flow_run_id=UUID(str(flow_run_id)))
    if raw is None:
        return None
    return ReviewVerdict.model_validate(json.loads(raw) if isinstance(raw, str) else raw)


def verdict_signed(verdict: ReviewVerdict, keyring: KeyRing | None = None) -> bool | None:
    """Whether the platform signed ``verdict``; None where its public key is not at hand (a reviewer's
    own machine without the keys directory)."""
    keyring = keyring or KeyRing.default()
    if not keyring.trusted_keys("platform"):
        return None
    return verdict.verify_with(keyring, "platform", VERDICT_DOMAIN)


# ---------------------------------------------------------------- evidence


def describe_duration(seconds: float) -> str:
    """A duration as a reviewer reads it: ``3 days``, ``1 day 12 hours``, ``2 hours``, ``45 minutes``."""
    seconds = max(0, int(seconds))
    units = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))
    parts = []
    for name, size in units:
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount} {name}{'s' if amount != 1 else ''}")
        if len(parts) == 2 or (parts and not seconds):
            break
    return " ".join(parts) or "0 seconds"


def flow_run_url(flow_run_id: str | UUID) -> str:
    """The Prefect UI page of a flow run."""
    from prefect.settings import get_current_settings

    return f"{(get_current_settings().ui_url or '').rstrip('/')}/runs/flow-run/{flow_run_id}"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _delta_lines(current: dict[str, float], previous: dict[str, float], lower_is_better: set[str]) -> list[str]:
    """One line per statistic: its value, the previous version's, the change and whether it is better."""
    lines = []
    for name in sorted(current):
        value = current[name]
        if name not in previous:
            lines.append(f"- `{name}` {value:.4g} (new)")
            continue
        delta = value - previous[name]
        improved = delta < 0 if name in lower_is_better else delta > 0
        verdict = "same" if delta == 0 else ("better" if improved else "**worse**")
        lines.append(f"- `{name}` {value:.4g} (previous {previous[name]:.4g}, {delta:+.4g}, {verdict})")
    return lines


def _bound(check: GateCheck, gate: GateDecision) -> str:
    """The limit a check compared with, in words."""
    if check.rule == "threshold":
        rule = next((t for t in gate.policy.thresholds if t.metric == check.metric), None)
        bounds = ([f"≥ {rule.minimum:.4g}"] if rule and rule.minimum is not None else []) + (
            [f"≤ {rule.maximum:.4g}"] if rule and rule.maximum is not None else [])
        return " and ".join(bounds) or f"{check.limit:.4g}"
    if check.rule == "non_regression":
        return f"Δ vs production ≥ {check.limit:+.4g}"
    if check.rule == "retention":
        return f"perplexity ratio ≤ {check.limit:.3g}"
    return f"{check.limit:.4g}"


def _limits_by_metric(gate: GateDecision | None) -> dict[str, list[str]]:
    """Metric -> the gate's verdicts on it, e.g. ``pass ≥ 0.3`` or ``**FAIL** Δ vs production ≥ -0.05``."""
    limits: dict[str, list[str]] = {}
    for check in gate.checks if gate else []:
        if check.limit is not None:
            limits.setdefault(check.metric, []).append(f"{'pass' if check.passed else '**FAIL**'} {_bound(check, gate)}")
    return limits


def _score_lines(evidence: EvidenceInputs) -> list[str]:
    """One line per candidate metric (the form is a narrow dialog: lists wrap, wide tables do not): the value,
    the gate's verdicts on it, production and the delta, the model before SFT, the answer baselines."""
    lower = set(evidence.lower_is_better)
    limits = _limits_by_metric(evidence.gate)
    lines = []
    for name in sorted(evidence.candidate_metrics):
        value = evidence.candidate_metrics[name]
        parts = [f"`{name}` **{value:.4g}**"]
        if name in limits:
            parts.append("gate: " + "; ".join(limits[name]))
        previous = evidence.production_metrics.get(name)
        if previous is not None:
            change = value - previous
            better = change < 0 if name in lower else change > 0
            verdict = "same" if change == 0 else "better" if better else "**worse**"
            parts.append(f"production {evidence.production_version or ''}: {previous:.4g} ({change:+.4g}, {verdict})")
        if name in evidence.before_sft_metrics:
            parts.append(f"before SFT: {evidence.before_sft_metrics[name]:.4g}")
        parts += [f"{baseline}: {score:.4g}" for baseline, score in sorted(evidence.baselines.get(name, {}).items())]
        lines.append("- " + " · ".join(parts))
    return lines


def _gate_check_line(check: GateCheck, gate: GateDecision) -> str:
    """One check of the gate with every number that decided it."""
    numbers = []
    if check.candidate is not None:
        numbers.append(f"candidate {check.candidate:.4g}")
    if check.production is not None:
        numbers.append(f"production {check.production:.4g}")
    if check.delta is not None:
        interval = (f" [{check.ci_low:+.3g}, {check.ci_high:+.3g}]" if check.ci_low is not None and check.ci_high is not None
                    else "")
        numbers.append(("ratio ×" if check.rule == "retention" else "Δ ") + f"{check.delta:+.3g}{interval}"
                       .replace("×+", "×"))
    if check.limit is not None:
        numbers.append(f"limit {_bound(check, gate)}")
    if check.num_samples is not None:
        numbers.append(f"n {check.num_samples}" + (f" ({check.required_samples} needed)" if check.required_samples else ""))
    warning = f" ⚠ {check.warning}" if check.warning else ""
    return (f"- {'**pass**' if check.passed else '**FAIL**'} {check.rule.replace('_', '-')} `{check.metric}`: "
            f"{', '.join(numbers) or '–'}; {check.reason}{warning}")


def _gate_lines(gate: GateDecision) -> list[str]:
    policy = gate.policy
    verdict = "passed" if gate.passed else f"**failed** ({len(gate.failures)} check(s))"
    against = (f"production `{gate.production_weights_sha256[:12]}`" if gate.production_weights_sha256
               else "no production model")
    return [
        f"The evaluation gate {verdict} (rules v{gate.rules_version}, candidate `{gate.candidate_weights_sha256[:12]}` "
        f"vs {against}). Each rule with its limit, the measured values, the {policy.confidence_level:.0%} paired-bootstrap "
        "confidence interval of the difference (positive = candidate better), the sample size, the verdict:",
        *[_gate_check_line(check, gate) for check in gate.checks],
    ]


def _contamination_text(summary: ContaminationSummary | None) -> str:
    if summary is None:
        return "_The contamination check did not run for this version._"
    near = (f"teacher-embedding cosine ≥ {summary.near_duplicate_threshold:.2f}" if summary.near_duplicate_threshold
            is not None else "near duplicates not checked")
    closest = f"; the closest pair reached cosine {summary.max_cosine:.3f}" if summary.max_cosine is not None else ""
    verdict = ("**none found**" if summary.num_contaminated_images == 0
               else f"**{summary.num_contaminated_images} found** ({summary.exact_matches} exact, "
                    f"{summary.near_duplicates} near duplicates)")
    text = (f"Evaluation images in the training data: {verdict} among {summary.num_eval_images} evaluation and "
            f"{summary.num_train_images} training images (exact bytes, exact pixels, {near}{closest}).")
    if summary.ngram_overlap_rate is not None:
        text += (f" Reference answers sharing a {summary.ngram_n}-word sequence with training text: "
                 f"{summary.ngram_overlap_rate:.1%} of {summary.eval_texts_checked}.")
    return text


def _sample_rows(samples: list[SampleGeneration]) -> list[str]:
    """Two columns (the form is narrow): the image, and the question with the right answer and both models'."""
    rows = ["| image | question and answers |", "|---|---|"]
    for sample in samples:
        image = f"![{_cell(sample.image_key)}]({sample.image_data_uri})" if sample.image_data_uri else f"`{_cell(sample.image_key)}`"
        mark = "" if sample.candidate_score is None else (" ✓" if sample.candidate_score >= 1 else " ✗")
        production = sample.production_output
        production_mark = ("" if production is None or sample.reference is None
                           else " ✓" if production.strip().lower() == sample.reference.strip().lower() else " ✗")
        question = _cell(sample.prompt) + (f" _({sample.question_type})_" if sample.question_type else "")
        rows.append(f"| {image} | {question} · right answer: **{_cell(sample.reference or '–')}** · candidate: "
                    f"{_cell(sample.candidate_output)}{mark} · production: {_cell(production or '–')}{production_mark} |")
    return rows


def build_evidence_report(
    candidate_version: str,
    requested_by: str,
    evidence: EvidenceInputs,
    lineage: LineageManifest | None,
    rule: ReviewRule,
    kind: Literal["promotion", "rollback"] = "promotion",
    origin: OriginRun | None = None,
) -> EvidenceReport:
    """One markdown page with everything a reviewer decides on: who asked and under which rule, the
    evaluation gate (every rule's limit, the candidate's value with its CI and sample size, the verdict),
    the scores next to production, the model before SFT and the answer baselines, contamination,
    caption-quality deltas, the lineage summary and sample answers with their images."""
    gate = evidence.gate
    against = evidence.production_version or "no production model yet"
    title = "Roll production back to" if kind == "rollback" else "Promote"
    asked = f"Requested by **{requested_by}** (the authenticated account that started it)"
    if origin is not None:
        asked += f" from the run [{origin.name}]({flow_run_url(origin.flow_run_id)})"
    if gate is not None:
        gate_section = _gate_lines(gate)
    elif evidence.evaluation_gate_markdown:
        gate_section = [evidence.evaluation_gate_markdown.strip()]
    else:
        gate_section = ["_No evaluation gate decision was recorded with this request._"]
    sections = [
        f"# {title} eve@{candidate_version} to production?",
        *(["This version held production before: approving it is a **rollback**."] if kind == "rollback" else []),
        f"{asked}. Allowed reviewers: {', '.join(rule.allowed_reviewers)}, never the requester; "
        f"{rule.approvals_needed} distinct approval(s) needed. Decide while logged in as yourself: the platform "
        f"records your account, not a typed name. A comment is required for approval and rejection; no valid "
        f"decision within **{describe_duration(rule.decision_timeout_seconds)}** of the request rejects the promotion.",
        "## Evaluation gate",
        *gate_section,
        f"## Scores against production ({against}), the model before SFT and the answer baselines",
        *([f"Production: {evidence.production_approval}."] if evidence.production_approval else []),
        "Baselines answer without looking at the image: uniform chance guesses among a question type's answers, "
        "most common answer always gives the type's most frequent one.",
        *_score_lines(evidence),
        "## Contamination",
        _contamination_text(evidence.contamination),
        "## Caption quality against the previous data version",
        f"Data `{(evidence.caption_dataset_hash or _quality_dataset(lineage) or '?')[:12]}` vs previous "
        f"`{(evidence.previous_caption_dataset_hash or '?')[:12]}`.",
        *_delta_lines(evidence.caption_quality, evidence.previous_caption_quality, set(evidence.lower_is_better)),
        "## Lineage",
        summarize_lineage_markdown(lineage) if lineage else "_no lineage manifest found_",
        "## Sample answers",
        *_sample_rows(evidence.sample_generations),
    ]
    markdown = _join_sections(sections)
    return EvidenceReport(markdown=markdown, sha256=hashlib.sha256(markdown.encode("utf-8")).hexdigest())


def _quality_dataset(lineage: LineageManifest | None) -> str | None:
    return lineage.quality.dataset_hash if lineage and lineage.quality else None


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _join_sections(parts: list[str]) -> str:
    # Table rows and list items stay on consecutive lines; everything else is its own paragraph.
    out: list[str] = []
    for part in parts:
        if out and any(part.startswith(mark) and out[-1].startswith(mark) for mark in ("|", "- ")):
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
    def answer(key: str, submitted: dict[str, Any], accepted: bool, status: str, reasons: list[str],
               account: str | None, record_hash: str | None = None) -> None:
        publish_verdict(ReviewVerdict(
            flow_run_id=request.flow_run_id, pause_key=key, account=account, accepted=accepted,
            decision=submitted.get("decision") if isinstance(submitted.get("decision"), str) else None,
            reasons=reasons, status=status, judged_at=datetime.now(timezone.utc).isoformat(),
            audit_record_hash=record_hash,
        ), keyring)

    while datetime.now(timezone.utc) < deadline:
        attempt += 1
        needed = request.rule.approvals_needed
        progress = f"> {len(approvals)} of {needed} approvals so far.\n\n" if needed > 1 else ""
        left = describe_duration((deadline - datetime.now(timezone.utc)).total_seconds())
        due = f"> Decide by **{deadline:%Y-%m-%d %H:%M} UTC** ({left} from now).\n\n"
        form = ReviewDecision.with_initial_data(description=notice + progress + due + report.markdown)
        key = f"review-{request.request_id[:12]}-{attempt}"
        submitted = wait_for_review_input(form, key, deadline, poll_interval_seconds)
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
            answer(key, submitted, False, "waiting", verdict.reasons, verdict.submitted_by)
            continue
        decision: SignedDecision = verdict.decision
        run_logger.info("decision %s by %s accepted", decision.decision, decision.reviewer)
        status = ("rejected" if decision.decision == "reject"
                  else "approved" if len({a.reviewer for a in approvals} | {decision.reviewer}) >= needed else "waiting")
        answer(key, submitted, True, status, [], decision.reviewer, approval.audit_record_hash)
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
        caption_quality=caption_statistics(lineage),
        caption_dataset_hash=lineage.quality.dataset_hash if lineage.quality else None,
        gate=lineage.evaluation.gate if lineage.evaluation else None,
        production_approval=approval_summary(production_lineage),
    )


def caption_statistics(lineage: LineageManifest | None) -> dict[str, float]:
    """The numeric caption-quality statistics a version's lineage recorded (its gate's summary)."""
    if lineage is None or lineage.quality is None:
        return {}
    statistics = lineage.quality.statistics
    summary = statistics.get("summary", statistics)
    return {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def approval_summary(lineage: LineageManifest | None) -> str | None:
    """``eve@v0.1.0, approved by carol at 2026-12-01 10:00 UTC: "why"`` from a version's lineage."""
    if lineage is None:
        return None
    approved = [a for a in lineage.approvals if a.decision == "approve"]
    if not approved:
        return f"{lineage.ref}, no recorded approval"
    last = approved[-1]
    when = datetime.fromisoformat(last.decided_at).astimezone(timezone.utc)
    reviewers = ", ".join(dict.fromkeys(a.reviewer for a in approved))
    return f"{lineage.ref}, approved by {reviewers} at {when:%Y-%m-%d %H:%M} UTC: \"{last.comment}\""


class ProductionEvidence(BaseModel):
    """What the evidence says about the model in production now (the one the candidate would replace)."""

    caption_quality: dict[str, float] = Field(default_factory=dict)
    """Its caption-quality statistics (the previous data version)."""
    caption_dataset_hash: str | None = None
    """Its caption dataset."""
    approval: str | None = None
    """Who approved it, when, why."""


@task(name="production-evidence")
def production_evidence(production_version: str | None) -> ProductionEvidence:
    """The production model's caption statistics and approval, for the candidate's evidence."""
    if production_version is None:
        return ProductionEvidence()
    lineage = ModelRegistry(PlatformSettings.load()).lineage(production_version)
    return ProductionEvidence(
        caption_quality=caption_statistics(lineage),
        caption_dataset_hash=lineage.quality.dataset_hash if lineage.quality else None,
        approval=approval_summary(lineage),
    )


class DecisionSummary(BaseModel):
    """One accepted decision of a promotion, as the audit log holds it."""

    reviewer: str
    decision: Literal["approve", "reject"]
    decided_at: str
    comment: str


class PromotionStatus(BaseModel):
    """Where the latest promotion request of a version stands, read from the audit log."""

    version: str
    request_id: str
    flow_run_id: str
    requested_by: str
    requested_at: str
    decide_by: str | None = None
    decisions: list[DecisionSummary] = Field(default_factory=list)
    """Accepted decisions, oldest first."""
    outcome: Literal["waiting", "approved", "rejected", "timed_out"] = "waiting"
    """``approved`` once production moved to the version."""
    outcome_at: str | None = None
    """When the outcome was recorded."""

    def decided_by(self, account: str) -> DecisionSummary | None:
        """The accepted decision of ``account`` (its latest), if any."""
        return next((d for d in reversed(self.decisions) if d.reviewer == account), None)


def promotion_status(version: str, audit_log: audit.AuditLog | None = None) -> PromotionStatus | None:
    """The latest promotion request of ``version`` and what became of it; None when none was requested."""
    records = (audit_log or audit.AuditLog.default()).records()
    requested = [index for index, r in enumerate(records) if r.event == audit.PROMOTION_REQUESTED
                 and (r.payload.get("request") or {}).get("version") == version]
    if not requested:
        return None
    asked = records[requested[-1]]
    request = asked.payload["request"]
    request_id = request["request_id"]
    status = PromotionStatus(
        version=version, request_id=request_id, flow_run_id=str(request.get("flow_run_id")),
        requested_by=str(request.get("requested_by") or asked.actor), requested_at=asked.recorded_at,
        decide_by=request.get("decide_by"),
    )
    for record in records[requested[-1] + 1:]:
        payload = record.payload
        if record.event == audit.REVIEW_DECISION_ACCEPTED and (payload.get("decision") or {}).get("request_id") == request_id:
            decision = payload["decision"]
            status.decisions.append(DecisionSummary(reviewer=decision["reviewer"], decision=decision["decision"],
                                                    decided_at=decision["decided_at"], comment=decision["comment"]))
        elif record.event == audit.PRODUCTION_ASSIGNED and payload.get("request_id") == request_id:
            status.outcome, status.outcome_at = "approved", record.recorded_at
        elif record.event == audit.REVIEW_TIMED_OUT and payload.get("request_id") == request_id:
            status.outcome, status.outcome_at = "timed_out", record.recorded_at
        elif record.event == audit.PROMOTION_REJECTED and payload.get("request_id") == request_id:
            if status.outcome == "waiting":
                status.outcome, status.outcome_at = "rejected", record.recorded_at
    return status


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
        origin=origin_run(flow_run.id),
    )


def origin_run(flow_run_id: str | UUID, max_depth: int = 16) -> OriginRun | None:
    """The top of the chain of runs that started ``flow_run_id`` (the retrain), or None when nothing
    started it (``eve promote request``, the API). For display and links only: who asked is
    :func:`resolve_requester`'s to say."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(str(flow_run_id)))
        origin = None
        for _ in range(max_depth):
            if not run.parent_task_run_id:
                break
            parent_task = client.read_task_run(run.parent_task_run_id)
            if parent_task.flow_run_id is None:
                break
            run = client.read_flow_run(parent_task.flow_run_id)
            origin = run
        if origin is None:
            return None
        flow = client.read_flow(origin.flow_id)
    return OriginRun(flow_run_id=str(origin.id), name=origin.name, flow_name=flow.name)


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
                                   context.kind, context.origin)
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


@task(name="link-origin-run")
def link_origin_run(context: PromotionContext) -> str | None:
    """In the promotion run: a link artifact (key ``requested-by-run``) back to the run that requested it."""
    if context.origin is None:
        return None
    url = flow_run_url(context.origin.flow_run_id)
    create_link_artifact(
        url, link_text=context.origin.name, key="requested-by-run",
        description=f"The {context.origin.flow_name} run that requested the promotion of `eve@{context.version}`",
    )
    return url


@task(name="link-promotion-run")
def link_promotion_run(promotion_flow_run_id: str, version: str) -> str:
    """In the retrain: a link artifact (key ``promotion-run``) to the promotion it started."""
    url = flow_run_url(promotion_flow_run_id)
    create_link_artifact(
        url, link_text=f"promote-eve@{version}", key="promotion-run",
        description=f"The promotion of `eve@{version}` this run requested: the evidence and the reviewer's form",
    )
    return url


def registered_model(lineage: LineageManifest):
    """A registered version as an OpenLineage dataset (``eve@vX``, its weights hash)."""
    from tasks.lineage.openlineage_refs import model_ref

    return model_ref(lineage.ref, lineage.weights.sha256 if lineage.weights else "unknown")


def production_model(lineage: LineageManifest):
    """The production stage once it holds ``lineage``'s version (``eve@production``)."""
    from tasks.lineage.openlineage_refs import model_ref

    return model_ref(f"{lineage.model_name}@production", lineage.weights.sha256 if lineage.weights else "unknown",
                     version=lineage.version)


PROMOTION_DEPLOYMENT = "promote-eve/promote"
"""The deployment (``prefect.yaml``) that runs a promotion on the platform's worker."""


@task(name="start-promotion", retries=2, retry_delay_seconds=10)
def start_promotion(request: PromotionRequest) -> str:
    """Create the promotion's flow run on ``PROMOTION_DEPLOYMENT`` and return its id at once.

    The run waits days for a reviewer; a worker owns it (the local default: the process worker
    ``eve server`` starts), so the retrain that asked for it can finish. Linked to the calling run
    in the UI as its child, so its requester is whoever started that run.

    A retry of this task (the server answered 500 after it had created the run) gets the run the first
    attempt created, not a second promotion of the same version waiting for reviewers forever: the
    idempotency key is this task run's id, the same for all its attempts.
    """
    from prefect.deployments import run_deployment
    from prefect.runtime import task_run

    flow_run = run_deployment(
        PROMOTION_DEPLOYMENT,
        parameters={"request": request.model_dump(mode="json", exclude_none=True)},
        flow_run_name=f"promote-eve@{request.candidate_version}",  # the flow's own name template, set at once
        timeout=0,
        idempotency_key=f"start-promotion/{task_run.id}" if task_run.id else None,
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
    "VERDICT_DOMAIN",
    "DecisionSummary",
    "PromotionStatus",
    "promotion_status",
    "ApprovalPolicy",
    "ContaminationSummary",
    "OriginRun",
    "ProductionEvidence",
    "ReviewVerdict",
    "approval_summary",
    "caption_statistics",
    "describe_duration",
    "flow_run_url",
    "link_origin_run",
    "link_promotion_run",
    "origin_run",
    "production_evidence",
    "production_model",
    "registered_model",
    "publish_verdict",
    "read_verdict",
    "verdict_key",
    "verdict_signed",
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
