"""The retrain's detached hand-over and the long wait: the promotion runs on the platform's deployment,
owned by a real process worker (``prefect worker start``, authenticated as a worker account), not by the
process that asked for it; its requester is the person who started the run that handed it over; a
rollback is requested and approved from the terminal by people logged in as themselves; and the wait
survives a restart of the real Prefect server."""

from __future__ import annotations

import time

import pytest

from tests.fixtures.prefect_server import acting_as
from tests.fixtures.promotion_runs import (
    eve_as,
    promotion_request,
    registry_with_production,
    submit_decision,
    use_policy,
)

pytestmark = pytest.mark.slow


def _flow_run(run_id):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def _wait(run_id, predicate, timeout_seconds: float = 240.0):
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        try:
            run = _flow_run(run_id)
        except Exception:  # noqa: BLE001 (the server may be restarting)
            time.sleep(1)
            continue
        if predicate(run):
            return run
        assert not (run.state and run.state.is_final() and not predicate(run)), f"run ended {run.state}"
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} did not get there in {timeout_seconds} s (now {run.state})")


def _wait_for_record(registry, after: int, event: str, timeout_seconds: float = 240.0):
    """The first audit record ``event`` past the first ``after`` records, once the worker wrote it."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        found = [r for r in registry.audit_log.records()[after:] if r.event == event]
        if found:
            return found[0]
        time.sleep(1)
    raise AssertionError(f"no {event} record within {timeout_seconds} s")


def _is_paused(run) -> bool:
    return run.state is not None and run.state.is_paused()


def _is_completed(run) -> bool:
    return run.state is not None and run.state.is_completed()


def _hand_over_as_worker(alice: str, worker: str):
    """What a worker does when the retrain it executes hands over its promotion: alice created the
    retrain's run; the worker creates the promotion's run as its child."""
    from prefect import flow, get_client, task

    @flow(name="retrain-stand-in")
    def retrain_stand_in() -> None: ...

    @task(name="start-promotion-stand-in")
    def hand_over() -> None: ...

    with acting_as(alice), get_client(sync_client=True) as client:
        parent = client.create_flow_run(retrain_stand_in, name="retrain-by-alice")
        handing_task = client.create_task_run(hand_over, flow_run_id=parent.id, dynamic_key="0")
    with acting_as(worker), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("promote-eve/promote")
        return client.create_flow_run_from_deployment(
            deployment.id,
            parameters={"request": promotion_request().model_dump(mode="json", exclude_none=True)},
            name="promote-eve@v0.2.0",
            parent_task_run_id=handing_task.id,
        )


def _eve_as(monkeypatch, auth: str, *argv: str) -> str:
    """``eve *argv`` as ``auth``; it must succeed; its output."""
    code, out, err = eve_as(monkeypatch, auth, *argv)
    assert code == 0, out + err
    return out


def test_detached_promotion_runs_on_the_worker_and_its_requester_is_who_started_the_retrain(
    prefect_server, prefect_accounts, eve_home, registry_inputs, monkeypatch
):
    from flows.deployments import apply_deployments
    from tasks import audit
    from tasks.orchestration import ensure_worker, is_recorded_process, stop_local_server
    from tasks.platform import PlatformSettings

    use_policy(reviewers=("alice", "carol"))
    registry = registry_with_production(registry_inputs)
    alice, worker_auth = prefect_accounts.auth("alice"), prefect_accounts.auth("eve-worker", kind="worker")
    worker = ensure_worker(PlatformSettings.load(), auth_string=worker_auth)
    try:
        assert apply_deployments(["promote"]) == ["promote-eve/promote"]
        created = _hand_over_as_worker(alice, worker_auth)
        paused = _wait(created.id, _is_paused)
        assert paused.deployment_id is not None and paused.labels["eve.created_by"] == "eve-worker"
        requested = next(r for r in registry.audit_log.records() if r.event == audit.PROMOTION_REQUESTED
                         and r.subject == "eve@v0.2.0")
        assert requested.actor == "alice"  # not the worker that created the run
        assert any("eve-worker (worker)" in step for step in requested.payload["requester_chain"])

        key = paused.state.state_details.pause_key
        submit_decision(prefect_server, alice, paused.id, {"decision": "approve", "comment": "mine"})
        paused = _wait(created.id, lambda run: _is_paused(run) and run.state.state_details.pause_key != key)
        assert registry.audit_log.records()[-1].event == audit.REVIEW_DECISION_REFUSED
        submit_decision(prefect_server, prefect_accounts.auth("carol"), paused.id,
                        {"decision": "approve", "comment": "handed over"})
        assert _wait(created.id, _is_completed).state.is_completed()
        assert registry.production_version() == "v0.2.0"
        assert [e for e in registry.history() if e.event == "assignment"][-1].reviewer == "carol"

        # Roll back from the terminal: alice asks, carol approves, both logged in as themselves.
        seen = len(registry.audit_log.records())
        _eve_as(monkeypatch, alice, "promote", "request", "v0.1.0", "--user", "alice")
        rollback = _wait_for_record(registry, seen, audit.PROMOTION_REQUESTED)
        assert (rollback.subject, rollback.actor, rollback.payload["request"]["kind"]) == ("eve@v0.1.0", "alice", "rollback")
        _wait(rollback.payload["request"]["flow_run_id"], _is_paused)
        assert "promote-eve@v0.1.0\trequested by alice" in _eve_as(monkeypatch, alice, "promote", "pending", "--user", "alice")
        _eve_as(monkeypatch, prefect_accounts.auth("carol"), "promote", "approve", "v0.1.0", "--user", "carol",
                "--comment", "v0.2.0 misbehaves in production")
        _wait(rollback.payload["request"]["flow_run_id"], _is_completed)
        assert registry.production_version() == "v0.1.0"
        last = [e for e in registry.history() if e.event == "assignment"][-1]
        assert (last.version, last.kind, last.reviewer) == ("v0.1.0", "rollback", "carol")
    finally:
        assert stop_local_server() is False  # no server of this home; the worker is stopped all the same
    assert not is_recorded_process(worker)


def test_the_wait_for_a_reviewer_survives_a_restart_of_the_prefect_server(
    prefect_accounts, eve_home, registry_inputs, monkeypatch
):
    """The platform's own local server (``eve server start``): a promotion waits on the worker, the
    server is stopped and started again on the same database, and the reviewer's decision sent
    after the restart still moves production."""
    from prefect.context import refresh_global_settings_context
    from tasks.orchestration import (
        ensure_prefect_server,
        ensure_worker,
        restart_local_server,
        running_local_server,
        stop_local_server,
    )
    from tasks.platform import PlatformSettings
    from tasks.promotion import start_promotion

    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING"):
        monkeypatch.delenv(name, raising=False)
    # The run's own client gives up at once on an unreachable server (Prefect's default retries would
    # hide a short outage), so the platform's wait is what carries the run through the restart.
    monkeypatch.setenv("PREFECT_CLIENT_MAX_RETRIES", "0")
    settings = PlatformSettings.load()
    use_policy(reviewers=("carol",), timeout_seconds=600)
    registry = registry_with_production(registry_inputs)
    try:
        api_url = ensure_prefect_server(settings)
        ensure_worker(settings)
        from flows.deployments import apply_deployments

        apply_deployments(["promote"])
        with acting_as(prefect_accounts.auth("alice")):
            run_id = start_promotion.fn(promotion_request())
        paused = _wait(run_id, _is_paused)
        before = running_local_server(settings)

        restarted = restart_local_server(settings, down_seconds=8)
        assert restarted["pid"] != before["pid"] and restarted["api_url"] == api_url
        again = _flow_run(run_id)  # the paused state is in the server's database
        assert again.state.is_paused() and again.state.state_details.pause_key == paused.state.state_details.pause_key
        submit_decision(api_url, prefect_accounts.auth("carol"), run_id, {"decision": "approve", "comment": "after restart"})
        assert _wait(run_id, _is_completed).state.is_completed()
        assert registry.production_version() == "v0.2.0"
        assert registry.lineage("v0.2.0").approvals[-1].comment == "after restart"
        worker_log = (settings.path("prefect") / "worker.log").read_text()
        assert "unreachable while waiting for a review" in worker_log  # the outage happened mid-wait
    finally:
        stop_local_server(settings)
        monkeypatch.undo()
        refresh_global_settings_context()


def test_a_retried_hand_over_creates_one_promotion_run(prefect_server, prefect_accounts, eve_home):
    """The server may answer 500 after it created the run; the task's retry must get that run back, not
    start a second promotion of the same version that would wait for reviewers forever."""
    from prefect import flow, get_client, task
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    from flows.deployments import apply_deployments
    from tasks.orchestration import ensure_work_pool
    from tasks.promotion import start_promotion

    attempts: list[str] = []

    @task(retries=3, retry_delay_seconds=1)  # the server's own 500s (seen here) are retried the same way
    def hand_over_answered_500_once() -> str:
        run_id = start_promotion.fn(promotion_request("v0.3.0"))
        attempts.append(run_id)
        if len(attempts) == 1:
            raise RuntimeError("Server error '500 Internal Server Error' (after the run was created)")
        return run_id

    @flow(name="retrain-stand-in")
    def retrain_stand_in() -> str:
        return hand_over_answered_500_once()

    with acting_as(prefect_accounts.auth("alice")):
        ensure_work_pool()  # no worker: the promotion's run only has to exist
        apply_deployments(["promote"])
        run_id = retrain_stand_in()
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["promote"])))
    assert len(attempts) == 2 and attempts[0] == attempts[1] == run_id
    assert [str(r.id) for r in runs if r.name == "promote-eve@v0.3.0"] == [run_id]
