"""The platform's Prefect server: Prefect's own app behind an authenticating gateway (docs/security.md).

Prefect 3's server knows one shared auth string; its UI asks for it and sends it as HTTP basic auth.
The platform runs Prefect's app (``prefect.server.api.server.create_app``) in its own process, wrapped
by :class:`AuthGateway`, an ASGI middleware that

- checks every API request's basic credentials (``name:password``) against the account store
  (``tasks/accounts.py``, bcrypt), answers 401 otherwise (``/api/health`` and ``/api/ready`` stay
  open for probes; the UI's static files are public, its data is not), and passes an authenticated
  request on with an internal auth string that exists only in this process's memory, so nothing
  reaches Prefect's API without passing the gateway;
- authenticates websocket clients (workers, event streams) by the same credentials in their
  ``auth`` message;
- attaches to every review decision submitted through the resume endpoint a claim signed with the
  ``gateway`` key: which account submitted which input for which flow run, when, with a fresh nonce
  (:class:`SubmissionClaim`); a client that sends its own claim is refused;
- labels every flow run it sees created with the account that created it (``eve.created_by``) and a
  signed :class:`CreatorClaim` bound to the run's id, and refuses label edits of ``eve.*`` keys.

The promotion flow trusts only these signed claims (verified with the gateway's public key), never a
typed name: the reviewer is the account that submitted, the requester the account that started.

Run it with ``python -m tasks.gateway --host 127.0.0.1 --port 4200`` (``tasks/orchestration.py`` does).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import json
import logging
import os
import re
import secrets
import time
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from tasks.accounts import Account, AccountKind, AccountStore
from tasks.platform import PlatformSettings
from tasks.signing import KeyRing, SignedModel, canonical_json

SUBMISSION_FIELD = "eve_authenticated_submission"
"""Key of the gateway's claim inside a submitted run input."""
CREATED_BY_LABEL = "eve.created_by"
CREATOR_CLAIM_LABEL = "eve.creator_claim"
RESERVED_LABEL_PREFIX = "eve."
SUBMISSION_DOMAIN = "eve-gateway-submission/1"
CREATOR_DOMAIN = "eve-gateway-creator/1"
OPEN_API_PATHS = frozenset({"/health", "/ready"})
AUTH_CACHE_SECONDS = 300.0
AUTH_CACHE_SIZE = 1024
INSTANCE_HEADER = "x-eve-server-instance"
"""Header of the probe answers (``/api/health``, ``/api/ready``) naming the server process."""
LABEL_ATTEMPTS = 6
"""Tries to label a new run with its creator. Prefect's label update reads then writes in one SQLite
transaction; a write committed in between makes SQLite refuse at once ("database is locked", no busy
wait), which happens under load: measured once in CI, so the gateway retries it."""
LABEL_RETRY_SECONDS = 0.5
"""First wait between tries; doubled after each."""
CREATION_RETRY_AFTER_SECONDS = 2

_UUID = r"[0-9a-fA-F-]{36}"
_RESUME = re.compile(rf"^/flow_runs/(?P<id>{_UUID})/resume$")
_CREATE_RUN = re.compile(rf"^/flow_runs/?$|^/deployments/(?P<id>{_UUID})/create_flow_run$")
_RUN_LABELS = re.compile(rf"^/flow_runs/(?P<id>{_UUID})/labels$")
_RUN = re.compile(rf"^/flow_runs/(?P<id>{_UUID})$")
logger = logging.getLogger("eve.gateway")


class SubmissionClaim(SignedModel):
    """What the gateway saw when a run input was submitted, signed with the gateway key."""

    account: str
    """The authenticated account that submitted it."""

    account_kind: AccountKind
    """Its kind: only ``user`` accounts may review."""

    flow_run_id: str
    """The flow run the input was sent to."""

    submitted_at: str
    """UTC time the gateway received it, ISO 8601."""

    nonce: str
    """Random per submission: a claim is accepted once."""

    input_sha256: str
    """sha256 of the canonical JSON of the submitted input (without this claim)."""


class CreatorClaim(SignedModel):
    """Which account created a flow run, signed with the gateway key and bound to the run's id."""

    account: str
    account_kind: AccountKind
    flow_run_id: str
    created_at: str


def input_sha256(run_input: dict[str, Any]) -> str:
    """The digest a submission claim binds: the input as submitted, the claim itself left out."""
    content = {key: value for key, value in run_input.items() if key != SUBMISSION_FIELD}
    return hashlib.sha256(canonical_json(content).encode("utf-8")).hexdigest()


def verify_submission(
    run_input: dict[str, Any], flow_run_id: str, keyring: KeyRing
) -> tuple[SubmissionClaim | None, str | None]:
    """(claim, None) when ``run_input`` carries a valid gateway claim for ``flow_run_id`` and this very
    input; (claim or None, reason) otherwise."""
    raw = run_input.get(SUBMISSION_FIELD)
    if raw is None:
        return None, "the decision carries no authenticated identity (not submitted through the platform's server)"
    try:
        claim = SubmissionClaim.model_validate(raw)
    except ValidationError:
        return None, "the decision's identity claim is malformed"
    if not claim.verify_with(keyring, "gateway", SUBMISSION_DOMAIN):
        return claim, "the decision's identity claim is not signed by the platform's server"
    if claim.flow_run_id != str(flow_run_id):
        return claim, f"the decision was submitted to flow run {claim.flow_run_id}, not this one"
    if claim.input_sha256 != input_sha256(run_input):
        return claim, "the decision differs from what was submitted"
    return claim, None


def issue_submission_claim(
    run_input: dict[str, Any], account: Account, flow_run_id: str, keyring: KeyRing
) -> dict[str, Any]:
    """``run_input`` with the gateway's signed claim that ``account`` submitted it to ``flow_run_id`` now."""
    claim = SubmissionClaim(
        account=account.name,
        account_kind=account.kind,
        flow_run_id=str(flow_run_id),
        submitted_at=_now(),
        nonce=secrets.token_hex(16),
        input_sha256=input_sha256(run_input),
    )
    claim.sign_with(keyring, "gateway", SUBMISSION_DOMAIN)
    return {**run_input, SUBMISSION_FIELD: claim.model_dump(mode="json")}


def verify_creator(labels: dict[str, Any] | None, flow_run_id: str, keyring: KeyRing) -> CreatorClaim | None:
    """The gateway's claim of who created flow run ``flow_run_id``, or None when absent or not valid."""
    raw = (labels or {}).get(CREATOR_CLAIM_LABEL)
    if not isinstance(raw, str):
        return None
    try:
        claim = CreatorClaim.model_validate_json(raw)
    except (ValidationError, ValueError):
        return None
    if claim.flow_run_id != str(flow_run_id):
        return None
    if not claim.verify_with(keyring, "gateway", CREATOR_DOMAIN):
        return None
    return claim


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class AuthGateway:
    """ASGI middleware in front of Prefect's server app (see the module docstring)."""

    def __init__(
        self,
        app: Any,
        accounts: AccountStore,
        keyring: KeyRing,
        internal_auth: str,
        api_prefix: str = "/api",
        instance_id: str = "",
    ) -> None:
        self.app = app
        self.instance_id = instance_id
        self.accounts = accounts
        self.keyring = keyring
        self.api_prefix = api_prefix.rstrip("/")
        self._internal_header = b"Basic " + base64.b64encode(internal_auth.encode("utf-8"))
        self._internal_auth = internal_auth
        self._cache: dict[bytes, tuple[Account, tuple, float]] = {}

    # ------------------------------------------------------------------ authentication

    async def _authenticate(self, credentials: str | None) -> Account | None:
        if not credentials or ":" not in credentials:
            return None
        cache_key = hashlib.sha256(credentials.encode("utf-8")).digest()
        version = self.accounts.version()
        cached = self._cache.get(cache_key)
        if cached and cached[1] == version and cached[2] > time.monotonic():
            return cached[0]
        name, _, password = credentials.partition(":")
        account = await asyncio.to_thread(self.accounts.authenticate, name, password)
        if account is None:
            logger.warning("authentication failed for account %r", name)
            return None
        if len(self._cache) >= AUTH_CACHE_SIZE:
            self._cache.clear()
        self._cache[cache_key] = (account, version, time.monotonic() + AUTH_CACHE_SECONDS)
        return account

    @staticmethod
    def _basic_credentials(headers: list[tuple[bytes, bytes]]) -> str | None:
        value = next((v for k, v in headers if k.lower() == b"authorization"), None)
        if value is None:
            return None
        scheme, _, token = value.decode("latin-1").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            return base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] not in ("http", "websocket") or not (
            path == self.api_prefix or path.startswith(self.api_prefix + "/")
        ):
            await self.app(scope, receive, send)
            return
        api_path = path[len(self.api_prefix) :] or "/"
        if scope["type"] == "websocket":
            await self.app(scope, self._authenticating_receive(receive), send)
            return
        method = scope.get("method", "GET").upper()
        if api_path in OPEN_API_PATHS and method == "GET":
            await self.app(scope, receive, self._naming_this_instance(send))
            return
        account = await self._authenticate(self._basic_credentials(scope.get("headers", [])))
        if account is None:
            await _send_json(send, 401, {"exception_message": "Unauthorized"})
            return
        headers = [
            (key, value)
            for key, value in scope.get("headers", [])
            if key.lower() not in (b"authorization", b"prefect-automation-id", b"prefect-automation-name")
        ]
        headers.append((b"authorization", self._internal_header))
        scope = {**scope, "headers": headers}

        if method == "POST" and (match := _RESUME.match(api_path)):
            await self._resume(scope, receive, send, account, match["id"])
        elif method == "POST" and _CREATE_RUN.match(api_path):
            await self._create_flow_run(scope, receive, send, account)
        elif method == "PATCH" and (_RUN_LABELS.match(api_path) or _RUN.match(api_path)):
            await self._guard_labels(scope, receive, send, labels_only=bool(_RUN_LABELS.match(api_path)))
        else:
            await self.app(scope, receive, send)

    def _naming_this_instance(self, send: Any) -> Any:
        """Probe answers carry this process's instance id, so whoever started it can tell that the
        server answering on the port is this one (another process may have bound the port first)."""
        if not self.instance_id:
            return send

        async def wrapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (INSTANCE_HEADER.encode(), self.instance_id.encode())]}
            await send(message)

        return wrapped

    def _authenticating_receive(self, receive: Any) -> Any:
        first = True

        async def wrapped() -> dict:
            nonlocal first
            message = await receive()
            if first and message["type"] == "websocket.receive":
                first = False
                text = message.get("text") or (message.get("bytes") or b"").decode("utf-8", "replace")
                try:
                    data = json.loads(text)
                except ValueError:
                    return message
                if isinstance(data, dict) and data.get("type") == "auth":
                    account = await self._authenticate(data.get("token"))
                    data["token"] = self._internal_auth if account else "not-authenticated"
                    return {"type": "websocket.receive", "text": json.dumps(data)}
            return message

        return wrapped

    async def _resume(self, scope: dict, receive: Any, send: Any, account: Account, flow_run_id: str) -> None:
        body = await _read_body(receive)
        try:
            document = json.loads(body or b"{}")
        except ValueError:
            await self.app(scope, _replay(body, receive), send)
            return
        run_input = document.get("run_input") if isinstance(document, dict) else None
        if isinstance(run_input, dict):
            if SUBMISSION_FIELD in run_input:
                await _send_json(send, 403, {"exception_message": f"{SUBMISSION_FIELD} is set by the platform"})
                return
            document["run_input"] = issue_submission_claim(run_input, account, flow_run_id, self.keyring)
            logger.info("decision for flow run %s submitted by %s", flow_run_id, account.name)
            body = json.dumps(document).encode("utf-8")
        await self.app(_with_body_length(scope, body), _replay(body, receive), send)

    async def _create_flow_run(self, scope: dict, receive: Any, send: Any, account: Account) -> None:
        body = await _read_body(receive)
        try:
            document = json.loads(body or b"{}")
        except ValueError:
            document = None
        if isinstance(document, dict) and isinstance(document.get("labels"), dict):
            document["labels"] = {
                key: value for key, value in document["labels"].items() if not key.startswith(RESERVED_LABEL_PREFIX)
            }
            body = json.dumps(document).encode("utf-8")
        scope = _with_body_length(scope, body)
        # The response is read here (to learn the new run's id), so it must not come back compressed.
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != b"accept-encoding"]
        start: dict = {}
        chunks: list[bytes] = []

        async def capture(message: dict) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, _replay(body, receive), capture)
        response = b"".join(chunks)
        if start.get("status") == 201:
            try:
                flow_run_id = json.loads(response)["id"]
            except (ValueError, KeyError, TypeError):
                flow_run_id = None
            if flow_run_id and not await self._label_creator(flow_run_id, account):
                # A run without its creator claim must not exist: nothing could tell who started it.
                # Remove it and answer 503, which Prefect's client retries (honouring Retry-After).
                await self._internal_request("DELETE", f"/flow_runs/{flow_run_id}")
                logger.error("flow run %s removed: it could not be labelled with its creator %s; the client "
                             "is asked to retry", flow_run_id, account.name)
                await _send_json(send, 503, {"exception_message": "flow run creation could not be completed; retry"},
                                 extra_headers=[(b"retry-after", str(CREATION_RETRY_AFTER_SECONDS).encode())])
                return
        if not start:
            logger.error("Prefect's app sent no response to a flow run creation by %s", account.name)
        await send(start or {"type": "http.response.start", "status": 500, "headers": []})
        await send({"type": "http.response.body", "body": response})

    async def _internal_request(self, method: str, api_path: str, json_body: Any = None) -> tuple[int, str]:
        """One request to Prefect's app in this process, as the gateway; (status, body text), where
        status 0 means the app raised (the error text instead of a body)."""
        import httpx

        # raise_app_exceptions=False: Starlette re-raises after answering 500; the answer is what counts.
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://eve-gateway") as client:
                response = await client.request(
                    method, f"{self.api_prefix}{api_path}", json=json_body,
                    headers={"Authorization": self._internal_header.decode()},
                )
        except Exception as error:  # noqa: BLE001 - reported to the caller, who decides
            return 0, f"{type(error).__name__}: {error}"
        return response.status_code, response.text

    async def _label_creator(self, flow_run_id: str, account: Account) -> bool:
        """Label the run with its creator and the signed claim; False when every try failed."""
        claim = CreatorClaim(account=account.name, account_kind=account.kind, flow_run_id=flow_run_id, created_at=_now())
        claim.sign_with(self.keyring, "gateway", CREATOR_DOMAIN)
        labels = {CREATED_BY_LABEL: account.name, CREATOR_CLAIM_LABEL: claim.model_dump_json()}
        wait_seconds = LABEL_RETRY_SECONDS
        for attempt in range(1, LABEL_ATTEMPTS + 1):
            status, text = await self._internal_request("PATCH", f"/flow_runs/{flow_run_id}/labels", labels)
            if 200 <= status < 300:
                return True
            logger.warning("labelling flow run %s with its creator failed (try %d of %d): %s", flow_run_id,
                           attempt, LABEL_ATTEMPTS, f"HTTP {status}: {text[:200]}" if status else text[:200])
            if attempt < LABEL_ATTEMPTS:
                await asyncio.sleep(wait_seconds)
                wait_seconds *= 2
        return False

    async def _guard_labels(self, scope: dict, receive: Any, send: Any, labels_only: bool) -> None:
        body = await _read_body(receive)
        try:
            document = json.loads(body or b"{}")
        except ValueError:
            document = {}
        labels = document if labels_only else (document.get("labels") if isinstance(document, dict) else None)
        if isinstance(labels, dict) and any(str(key).startswith(RESERVED_LABEL_PREFIX) for key in labels):
            await _send_json(send, 403, {"exception_message": f"labels {RESERVED_LABEL_PREFIX}* are set by the platform"})
            return
        await self.app(scope, _replay(body, receive), send)


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replayed() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _with_body_length(scope: dict, body: bytes) -> dict:
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    return {**scope, "headers": headers}


async def _send_json(send: Any, status: int, content: dict,
                     extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(content).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra_headers or [])})
    await send({"type": "http.response.body", "body": body})


def serve(host: str, port: int, instance_id: str = "") -> None:
    """Run Prefect's server app behind the gateway in this process until it is stopped."""
    internal_auth = secrets.token_urlsafe(32)
    # Prefect reads its settings on import: the internal auth string must be in place first. It is
    # never written anywhere: every client outside this process must pass the gateway.
    os.environ["PREFECT_SERVER_API_AUTH_STRING"] = internal_auth
    os.environ.pop("PREFECT_API_AUTH_STRING", None)
    os.environ.pop("PREFECT_API_URL", None)
    import uvicorn
    from prefect.server.api.server import create_app

    settings = PlatformSettings.load()
    keyring = KeyRing.default(settings)
    keyring.ensure("gateway")
    app = AuthGateway(create_app(final=True), AccountStore.default(settings), keyring, internal_auth,
                      instance_id=instance_id)
    logging.basicConfig(level=logging.INFO)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_keep_alive=5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the platform's authenticating Prefect server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--instance-id", default="", help="identifies this process to `eve server stop`")
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.instance_id)


if __name__ == "__main__":
    main()


__all__ = [
    "CREATED_BY_LABEL",
    "CREATOR_CLAIM_LABEL",
    "INSTANCE_HEADER",
    "SUBMISSION_DOMAIN",
    "SUBMISSION_FIELD",
    "AuthGateway",
    "CreatorClaim",
    "SubmissionClaim",
    "input_sha256",
    "issue_submission_claim",
    "main",
    "serve",
    "verify_creator",
    "verify_submission",
]
