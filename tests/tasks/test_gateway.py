"""The authenticating gateway in front of Prefect's server app, exercised through ASGI with a stand-in
for Prefect's app (what reaches it, what comes back). The real server is exercised by the promotion
flow, browser and hand-over tests."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid

import httpx
import pytest

from tasks.accounts import AccountStore
from tasks.gateway import (
    CREATED_BY_LABEL,
    CREATOR_CLAIM_LABEL,
    SUBMISSION_FIELD,
    AuthGateway,
    verify_creator,
    verify_submission,
)
from tasks.signing import KeyRing

INTERNAL = "internal-secret"


class StandInPrefect:
    """Records every request; creates flow runs (201 with an id); accepts label patches."""

    def __init__(self, failing_label_updates: int = 0) -> None:
        self.requests: list[dict] = []
        self.labels: dict[str, dict] = {}
        self.deleted: list[str] = []
        self.created: list[str] = []
        self.failing_label_updates = failing_label_updates
        """The next label updates that fail as Prefect's do when SQLite refuses the write."""

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.requests.append({"path": scope["path"], "method": scope["method"], "headers": headers, "body": body})
        status, payload = 200, {}
        if scope["path"] == "/api/flow_runs/" and scope["method"] == "POST":
            status, payload = 201, {"id": str(uuid.uuid4())}
            self.created.append(payload["id"])
        elif scope["path"].endswith("/labels") and scope["method"] == "PATCH":
            if self.failing_label_updates > 0:
                self.failing_label_updates -= 1
                # Starlette's error middleware answers 500, then re-raises the error.
                await send({"type": "http.response.start", "status": 500, "headers": []})
                await send({"type": "http.response.body", "body": b"Internal Server Error"})
                raise RuntimeError("sqlite3.OperationalError: database is locked")
            self.labels[scope["path"].split("/")[3]] = json.loads(body)
            status = 204
        elif scope["method"] == "DELETE":
            self.deleted.append(scope["path"].split("/")[3])
            status = 204
        content = json.dumps(payload).encode() if status != 204 else b""
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": content})


@pytest.fixture
def setup(tmp_path):
    store = AccountStore(tmp_path / "auth" / "accounts.json")
    passwords = {"carol": store.add("carol"), "ci": store.add("ci", kind="service")}
    keyring = KeyRing(tmp_path / "keys")
    inner = StandInPrefect()
    return AuthGateway(inner, store, keyring, INTERNAL), inner, passwords, keyring, store


def _call(gateway, method: str, path: str, auth: tuple[str, str] | None = None, **kwargs) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://server") as client:
            return await client.request(method, path, auth=auth, **kwargs)

    return asyncio.run(go())


def test_every_api_request_needs_an_accounts_credentials(setup):
    gateway, inner, passwords, _, store = setup
    assert _call(gateway, "GET", "/api/version").status_code == 401
    assert _call(gateway, "GET", "/api/version", auth=("carol", "wrong")).status_code == 401
    assert _call(gateway, "GET", "/api/version", auth=("nobody", passwords["carol"])).status_code == 401
    assert inner.requests == []  # nothing unauthenticated reached Prefect
    assert _call(gateway, "GET", "/api/health").status_code == 200  # probes stay open
    assert _call(gateway, "GET", "/runs").status_code == 200  # the UI's files are public, its data is not

    ok = _call(gateway, "GET", "/api/version", auth=("carol", passwords["carol"]),
               headers={"Prefect-Automation-Id": str(uuid.uuid4()), "Prefect-Automation-Name": "bWFsbG9yeQ=="})
    assert ok.status_code == 200
    seen = inner.requests[-1]["headers"]
    assert seen["authorization"] == "Basic " + base64.b64encode(INTERNAL.encode()).decode()
    assert "prefect-automation-id" not in seen and "prefect-automation-name" not in seen

    store.remove("carol")  # takes effect at once, cached login or not
    assert _call(gateway, "GET", "/api/version", auth=("carol", passwords["carol"])).status_code == 401


def test_a_submitted_decision_carries_the_servers_signed_claim_of_who_sent_it(setup):
    gateway, inner, passwords, keyring, _ = setup
    run_id = str(uuid.uuid4())
    response = _call(gateway, "POST", f"/api/flow_runs/{run_id}/resume", auth=("carol", passwords["carol"]),
                     json={"run_input": {"decision": "approve", "comment": "ok", "reviewer": "bob"}})
    assert response.status_code == 200
    forwarded = json.loads(inner.requests[-1]["body"])["run_input"]
    claim, problem = verify_submission(forwarded, run_id, keyring)
    assert problem is None and claim.account == "carol" and claim.account_kind == "user"
    assert verify_submission(forwarded, str(uuid.uuid4()), keyring)[1] is not None  # bound to that run

    forged = {"decision": "approve", "comment": "ok", SUBMISSION_FIELD: {"account": "carol"}}
    before = len(inner.requests)
    assert _call(gateway, "POST", f"/api/flow_runs/{run_id}/resume", auth=("ci", passwords["ci"]),
                 json={"run_input": forged}).status_code == 403
    assert len(inner.requests) == before


def test_created_flow_runs_are_labelled_with_their_creator_and_labels_are_guarded(setup):
    gateway, inner, passwords, keyring, _ = setup
    auth = ("ci", passwords["ci"])
    created = _call(gateway, "POST", "/api/flow_runs/", auth=auth,
                    json={"flow_id": str(uuid.uuid4()), "labels": {CREATED_BY_LABEL: "carol", "team": "ml"}})
    assert created.status_code == 201
    run_id = created.json()["id"]
    sent_labels = json.loads(inner.requests[0]["body"])["labels"]
    assert sent_labels == {"team": "ml"}  # the client's own eve.* label never reaches Prefect
    labels = inner.labels[run_id]
    assert labels[CREATED_BY_LABEL] == "ci"
    claim = verify_creator(labels, run_id, keyring)
    assert claim is not None and (claim.account, claim.account_kind) == ("ci", "service")
    assert verify_creator(labels, str(uuid.uuid4()), keyring) is None  # a label copied to another run

    for path, body in [
        (f"/api/flow_runs/{run_id}/labels", {CREATOR_CLAIM_LABEL: "x"}),
        (f"/api/flow_runs/{run_id}", {"labels": {CREATED_BY_LABEL: "carol"}}),
    ]:
        assert _call(gateway, "PATCH", path, auth=auth, json=body).status_code == 403
    assert _call(gateway, "PATCH", f"/api/flow_runs/{run_id}/labels", auth=auth, json={"team": "cv"}).status_code == 204


def test_a_refused_label_write_is_retried_and_a_run_that_stays_unlabelled_is_removed(setup, monkeypatch):
    import tasks.gateway as gateway_module

    monkeypatch.setattr(gateway_module, "LABEL_RETRY_SECONDS", 0.01)
    gateway, inner, passwords, keyring, _ = setup
    auth = ("ci", passwords["ci"])

    inner.failing_label_updates = gateway_module.LABEL_ATTEMPTS - 1  # refused under load, then accepted
    created = _call(gateway, "POST", "/api/flow_runs/", auth=auth, json={"flow_id": str(uuid.uuid4())})
    assert created.status_code == 201
    run_id = created.json()["id"]
    assert verify_creator(inner.labels[run_id], run_id, keyring) is not None
    assert inner.deleted == []

    inner.failing_label_updates = gateway_module.LABEL_ATTEMPTS  # never accepted
    refused = _call(gateway, "POST", "/api/flow_runs/", auth=auth, json={"flow_id": str(uuid.uuid4())})
    # 503 with Retry-After is what Prefect's client retries; the unlabelled run is gone, so a retry
    # leaves exactly one run, and it carries its creator.
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert inner.deleted == [inner.created[-1]] and inner.created[-1] not in inner.labels


def test_websocket_clients_authenticate_with_the_same_credentials(setup):
    gateway, _, passwords, _, _ = setup

    def first_message(token: str) -> dict:
        messages = [{"type": "websocket.connect"}, {"type": "websocket.receive", "text": json.dumps({"type": "auth", "token": token})}]

        async def receive():
            return messages.pop(0)

        wrapped = gateway._authenticating_receive(receive)  # noqa: SLF001 (the unit under test)

        async def go():
            await wrapped()
            return json.loads((await wrapped())["text"])

        return asyncio.run(go())

    assert first_message(f"carol:{passwords['carol']}")["token"] == INTERNAL
    assert first_message("carol:wrong")["token"] != INTERNAL
