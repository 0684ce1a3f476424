"""Promotion of a registered EVE candidate to production, with reviewer approval in the Prefect UI.

Audit the request, publish the candidate's lineage and one evidence report, pause for a reviewer's
decision that the platform's policy accepts (or the deadline), and on approval move the production
stage in the registry. Run it from the retrain flow after the evaluation gate, or by hand:

    python -m flows.promotion_flow --request request.json [--flow-run-name promote-v0.2.0]
"""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel

from tasks.promotion import (
    ApprovalPolicy,
    EvidenceInputs,
    ReviewOutcome,
    assign_production,
    collect_review_decision,
    load_lineage,
    publish_evidence_report,
    publish_lineage,
    record_promotion_request,
)


class PromotionRequest(BaseModel):
    """Parameters of one promotion."""

    candidate_version: str
    """Registered version to promote, e.g. ``v0.2.0``."""

    requested_by: str
    """Who asks for the promotion; may not approve it."""

    evidence: EvidenceInputs
    """Evaluation, caption-quality and sample-generation results to show the reviewer."""

    policy: ApprovalPolicy
    """Allowed reviewers and deadline."""


@flow(name="promote-eve", log_prints=True)
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


def main(argv: list[str] | None = None) -> int:
    """Run one promotion from a request file (the retrain's detached hand-over uses this)."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description="Run the promotion flow for a registered candidate")
    parser.add_argument("--request", required=True, help="PromotionRequest JSON file")
    parser.add_argument("--flow-run-name", default=None, help="name of the flow run (e.g. promote-v0.1.0)")
    args = parser.parse_args(argv)
    request = PromotionRequest.model_validate_json(Path(args.request).read_text())
    flow_fn = promote_eve.with_options(flow_run_name=args.flow_run_name) if args.flow_run_name else promote_eve
    outcome = flow_fn(request)
    print(outcome.model_dump_json(indent=2))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
