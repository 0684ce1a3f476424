"""The retrain's detached hand-over: the promotion runs on the platform's deployment, owned by a real
process worker (``prefect worker start``), not by the process that asked for it."""

from __future__ import annotations

import time

import pytest

from tests.fixtures.promotion_runs import promotion_request, registry_with_production

pytestmark = pytest.mark.slow


def _flow_run(run_id: str):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def _wait(run_id: str, predicate, timeout_seconds: float = 180.0):
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        run = _flow_run(run_id)
        if predicate(run):
            return run
        assert not (run.state and run.state.is_final() and not predicate(run)), f"run ended {run.state}"
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} did not get there in {timeout_seconds} s (now {run.state})")


def test_detached_promotion_runs_on_the_worker_and_waits_for_the_reviewer(prefect_server, eve_home, registry_inputs):
    from flows.deployments import apply_deployments
    from prefect.flow_runs import resume_flow_run
    from tasks.orchestration import ensure_worker, stop_local_server
    from tasks.platform import PlatformSettings
    from tasks.promotion import start_promotion

    registry = registry_with_production(registry_inputs)
    worker = ensure_worker(PlatformSettings.load())
    try:
        assert apply_deployments(["promote"]) == ["promote-eve/promote"]
        run_id = start_promotion.fn(promotion_request())  # returns at once: nothing waits here
        paused = _wait(run_id, lambda run: run.state is not None and run.state.is_paused())
        assert paused.name == "promote-eve@v0.2.0" and paused.deployment_id is not None
        resume_flow_run(paused.id, run_input={"decision": "approve", "reviewer": "carol", "comment": "handed over"})
        done = _wait(run_id, lambda run: run.state is not None and run.state.is_completed())
        assert done.state.is_completed()
        assert registry.production_version() == "v0.2.0"
        assert [e for e in registry.history() if e.event == "assignment"][-1].reviewer == "carol"
    finally:
        assert stop_local_server() is False  # no server of this home; the worker is stopped all the same
    from tasks.orchestration import is_recorded_process

    assert not is_recorded_process(worker)
