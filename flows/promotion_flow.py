"""Promotion of a registered EVE candidate to production, with reviewer approval in the Prefect UI.

Audit the request, publish the candidate's lineage and one evidence report, pause for a reviewer's
decision that the platform's policy accepts (or the deadline), and on approval move the production
stage in the registry. The retrain starts it on the ``promote-eve/promote`` deployment (a worker
owns the waiting run) or, with ``PromotionParameters.mode="wait"``, as its own subflow.
"""

from __future__ import annotations

from prefect import flow

from tasks.promotion import (
    PromotionRequest,
    ReviewOutcome,
    assign_production,
    collect_review_decision,
    load_lineage,
    publish_evidence_report,
    publish_lineage,
    record_promotion_request,
)


@flow(name="promote-eve", flow_run_name="promote-eve@{request.candidate_version}", log_prints=True)
def promote_eve(request: PromotionRequest) -> ReviewOutcome:
    """Evidence report -> reviewer decision under the policy -> production stage on approval."""
    record_promotion_request(request.candidate_version, request.requested_by, request.policy)
    lineage = load_lineage(request.candidate_version)
    publish_lineage(lineage)
    report = publish_evidence_report(
        request.candidate_version, request.requested_by, request.evidence, lineage, request.policy
    )
    outcome = collect_review_decision(request.candidate_version, request.requested_by, report, request.policy)
    if outcome.status == "approved":
        assign_production(request.candidate_version, outcome.approval)
    return outcome
