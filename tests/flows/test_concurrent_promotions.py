"""Two candidates whose promotions are requested at once (docs/operations.md, "Concurrency"): each
flow run waits for its own reviewers' decision (a decision on one resumes only that one), assignments
serialise on the registry's write lock, and their order is recorded in the registry's history and
the signed audit log. And prefect.yaml's declared concurrency reaches the real server."""

from __future__ import annotations

import contextlib
import os

import pytest

from tasks import audit
from tests.fixtures.promotion_runs import (
    promotion_request,
    registry_with_production,
    start_promotion,
    submit_decision,
    use_policy,
    wait_for_pause,
)

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def _client_retries_500():
    """Two flow runs created at the same instant: the test server has answered POST /flow_runs/ with a
    500 under such load (main's CI saw it too; the fixture's fix is separate). Prefect's client
    retries that status when told to, as it retries 429/502/503."""
    from prefect.context import refresh_global_settings_context

    previous = os.environ.get("PREFECT_CLIENT_RETRY_EXTRA_CODES")
    os.environ["PREFECT_CLIENT_RETRY_EXTRA_CODES"] = "500"
    refresh_global_settings_context()
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PREFECT_CLIENT_RETRY_EXTRA_CODES", None)
        else:
            os.environ["PREFECT_CLIENT_RETRY_EXTRA_CODES"] = previous
        refresh_global_settings_context()


def test_two_candidates_requested_at_once_wait_for_their_own_decisions_in_recorded_order(
    prefect_server, prefect_accounts, eve_home, registry_inputs
):
    from tests.fixtures.model_registry import passing_gate

    use_policy(reviewers=("bob", "carol"))
    registry = registry_with_production(registry_inputs)  # v0.1.0 in production, v0.2.0 a candidate
    registry.register_candidate(*registry_inputs(3), passing_gate())  # v0.3.0 a candidate too
    alice = prefect_accounts.auth("alice")
    with _client_retries_500():
        runs = {version: start_promotion(promotion_request(version), requested_as=alice) for version in ("v0.2.0", "v0.3.0")}
        paused = {version: wait_for_pause(run) for version, run in runs.items()}
        _decide_in_turn(prefect_server, prefect_accounts, registry, runs, paused)


def _decide_in_turn(prefect_server, prefect_accounts, registry, runs, paused) -> None:
    from tasks.verification import verify_platform

    submit_decision(prefect_server, prefect_accounts.auth("carol"), paused["v0.3.0"].id,
                    {"decision": "approve", "comment": "v0.3.0: VQA up"})
    assert runs["v0.3.0"].join(timeout_seconds=180).status == "approved"
    assert registry.production_version() == "v0.3.0"
    still = wait_for_pause(runs["v0.2.0"], timeout_seconds=10)  # untouched by the other run's decision
    assert still.id == paused["v0.2.0"].id and still.state.state_details.pause_key == paused["v0.2.0"].state.state_details.pause_key

    answer = submit_decision(prefect_server, prefect_accounts.auth("bob"), paused["v0.2.0"].id,
                             {"decision": "approve", "comment": "v0.2.0: CIDEr up"})
    assert answer["status_code"] in (200, 201), answer
    outcome = runs["v0.2.0"].join(timeout_seconds=180)
    assignments = [(e.version, e.reviewer) for e in registry.history() if e.event == "assignment"]
    assigned = [r.subject for r in registry.audit_log.records() if r.event == audit.PRODUCTION_ASSIGNED]
    assert outcome.status == "approved"
    assert assignments[-2:] == [("v0.3.0", "carol"), ("v0.2.0", "bob")]  # the order the decisions arrived in
    assert assigned[-2:] == ["eve@v0.3.0", "eve@v0.2.0"]
    assert registry.production_version() == "v0.2.0"
    report = verify_platform()
    assert report.ok, report.problems


def test_retrain_deployments_apply_with_their_declared_concurrency(prefect_server, eve_home):
    """prefect.yaml's concurrency_limit reaches the server: one run per retrain deployment, the next queued."""
    from prefect import get_client

    from flows.deployments import apply_deployments
    from tasks.orchestration import ensure_work_pool

    ensure_work_pool()
    applied = apply_deployments(["weekly-retrain", "promote"])
    with get_client(sync_client=True) as client:
        weekly = client.read_deployment_by_name(applied[0])
        promote = client.read_deployment_by_name(applied[1])
    assert weekly.global_concurrency_limit is not None and weekly.global_concurrency_limit.limit == 1
    assert weekly.concurrency_options.collision_strategy.value == "ENQUEUE"
    assert promote.global_concurrency_limit is None
