"""Promotion of a registered EVE candidate to production, with authenticated reviewers in the Prefect UI.

Work out who asked (the authenticated account that started this run, or the run that started it)
and the review rule (the platform's policy), publish the candidate's lineage and one evidence
report, record the signed request, pause for decisions the platform accepts (or the deadline), and
on approval move the production stage in the registry in one recoverable step. The retrain starts it
on the ``promote-eve/promote`` deployment (a worker owns the waiting run) or, with
``PromotionParameters.mode="wait"``, as its own subflow; ``eve promote request VERSION`` starts one for
any registered version (a rollback when it held production before). The run is named
``promote-eve@<version>`` and links back to the run that requested it (artifact ``requested-by-run``).
"""

from __future__ import annotations

from prefect import flow

from tasks.lineage.openlineage import lineage_run
from tasks.log_filters import quiet_library_chatter
from tasks.promotion import (
    PromotionRequest,
    ReviewOutcome,
    anchor_audit_head,
    assign_production,
    collect_review_decisions,
    link_origin_run,
    load_lineage,
    prepare_promotion,
    production_model,
    publish_evidence_report,
    publish_lineage,
    record_promotion_request,
    registered_model,
)


@flow(name="promote-eve", flow_run_name="promote-eve@{request.candidate_version}", log_prints=True)
def promote_eve(request: PromotionRequest) -> ReviewOutcome:
    """Evidence report -> authenticated decisions under the platform's policy -> production stage on approval."""
    quiet_library_chatter()
    context = prepare_promotion(request)
    link_origin_run(context)
    lineage = load_lineage(request.candidate_version)
    publish_lineage(lineage)
    report = publish_evidence_report(context, request.evidence, lineage)
    # One OpenLineage run for the whole review: the version in; production out when it moved.
    with lineage_run("promote", [registered_model(lineage)]) as moved:
        recorded = record_promotion_request(context, report)
        outcome = collect_review_decisions(recorded, report, context.poll_interval_seconds)
        if outcome.status == "approved":
            assign_production(request.candidate_version, outcome.approvals)
            moved.append(production_model(lineage))
        else:
            anchor_audit_head()
    return outcome
