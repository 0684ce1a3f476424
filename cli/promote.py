"""``eve promote pending|approve|reject|request|complete``: promotions from the terminal.

eve promote pending
eve promote approve v0.2.0 --comment "why" [--user carol]     # decides as the authenticated account
eve promote request v0.1.0                                      # promote (or roll back to) a registered version
eve promote complete v0.2.0                                     # finish an approved promotion whose step was interrupted

A decision goes to the paused run exactly like the Prefect UI's Resume button, through the
platform's server, which records the account that sent it: ``PREFECT_API_AUTH_STRING=name:password``,
or ``--user NAME`` (the password is asked for, or read from stdin). The platform's policy judges it
there (allowed reviewer, not the requester, comment given) and publishes its signed verdict on the run;
the command waits for it and exits 0 when the decision was accepted, 1 with the policy's reasons when
it was refused. Asking again for what already happened ("approve" an approved version) answers what
happened and when, exit 0.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time


def _login(user: str | None) -> None:
    """Use ``user``'s credentials for this command (before Prefect reads its settings)."""
    if user:
        password = getpass.getpass(f"password for {user}: ") if sys.stdin.isatty() else sys.stdin.readline().strip()
        os.environ["PREFECT_API_AUTH_STRING"] = f"{user}:{password}"
    from tasks.orchestration import ensure_prefect_server

    ensure_prefect_server()


def _paused_promotions(version: str | None = None) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["promote-eve"])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
            ),
        )
    if version is not None:
        runs = [run for run in runs if _candidate_version(run) == version]
    return runs


def _candidate_version(run) -> str | None:
    """The version a promotion run is about (its parameters; its name when they are not readable)."""
    request = (run.parameters or {}).get("request")
    if isinstance(request, dict) and request.get("candidate_version"):
        return str(request["candidate_version"])
    return run.name.removeprefix("promote-eve@") if run.name.startswith("promote-eve@") else None


def _pending(args: argparse.Namespace) -> int:
    from tasks.orchestration import ui_url

    _login(args.user)
    base = ui_url(os.environ["PREFECT_API_URL"])
    runs = _paused_promotions()
    if not runs:
        print("no promotion is waiting for a decision")
        return 0
    for run in runs:
        print(f"{run.name}\trequested by {run.labels.get('eve.created_by', '?')}\t{base}/runs/flow-run/{run.id}")
    return 0


VERDICT_WAIT_SECONDS = 180.0
"""How long ``approve``/``reject`` waits for the platform's verdict (a waiting run polls every few seconds)."""


def _when(timestamp: str | None) -> str:
    from datetime import datetime, timezone

    if not timestamp:
        return "?"
    return f"{datetime.fromisoformat(timestamp).astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC"


def _already_decided(version: str, account: str, decision: str) -> int:
    """No run of ``version`` waits for a decision: say what became of its latest request. Asking for the
    outcome it already has succeeds (exit 0), anything else explains why there is nothing to decide (1)."""
    from tasks.promotion import promotion_status

    status = promotion_status(version)
    if status is None:
        print(f"no promotion of {version} was requested (`eve promote request {version}` asks for one)", file=sys.stderr)
        return 1
    verb = {"approve": "approved", "reject": "rejected"}[decision]
    decided = [d for d in status.decisions if d.decision == decision]
    mine = status.decided_by(account)
    if status.outcome == "approved":
        who = ", ".join(f"{d.reviewer} at {_when(d.decided_at)}" for d in decided if d.decision == "approve")
        if decision == "approve":
            print(f"eve@{version} was already approved by {who}; production moved to it at {_when(status.outcome_at)}")
            return 0
        print(f"eve@{version} was already approved by {who} and holds production since {_when(status.outcome_at)}; "
              "a rejection changes nothing now: roll back with `eve promote request <earlier version>`", file=sys.stderr)
        return 1
    if status.outcome == "rejected":
        rejection = next((d for d in status.decisions if d.decision == "reject"), None)
        by = f"by {rejection.reviewer} at {_when(rejection.decided_at)}" if rejection else f"at {_when(status.outcome_at)}"
        if decision == "reject":
            print(f"eve@{version} was already rejected {by}")
            return 0
        print(f"eve@{version} was rejected {by}; request it again with `eve promote request {version}`", file=sys.stderr)
        return 1
    if status.outcome == "timed_out":
        print(f"the promotion of eve@{version} timed out at {_when(status.outcome_at)} without a valid decision "
              f"(rejected); request it again with `eve promote request {version}`", file=sys.stderr)
        return 1
    if mine is not None and mine.decision == decision:
        print(f"eve@{version}: already {verb} by {account} at {_when(mine.decided_at)}; waiting for the rest of the review")
        return 0
    print(f"the promotion of eve@{version} (requested by {status.requested_by} at {_when(status.requested_at)}) is not "
          "waiting for a decision right now (its run is not paused: see `eve promote pending`)", file=sys.stderr)
    return 1


def _wait_for_verdict(run_id, pause_key: str, timeout_seconds: float):
    from tasks.promotion import read_verdict

    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        verdict = read_verdict(run_id, pause_key)
        if verdict is not None:
            return verdict
        time.sleep(1.0)
    return None


def _decide(args: argparse.Namespace, decision: str) -> int:
    """Send a decision as the authenticated account, then wait for the platform's verdict: exit 0 when it
    was accepted (or already is the outcome), 1 with the policy's reasons when refused."""
    comment = args.comment.strip()
    if not comment:
        print("eve promote: a comment is required (--comment \"why\"), for approval and rejection alike", file=sys.stderr)
        return 2
    _login(args.user)
    from prefect import get_client
    from prefect.client.schemas.responses import SetStateStatus

    from tasks.accounts import CLI_ACCOUNT
    from tasks.promotion import promotion_status, verdict_signed

    account = os.environ.get("PREFECT_API_AUTH_STRING", "").partition(":")[0]
    if account == CLI_ACCOUNT:
        print(f"you are not logged in as a person ({CLI_ACCOUNT} is the platform's service account, which never "
              "reviews): pass --user NAME or set PREFECT_API_AUTH_STRING=name:password", file=sys.stderr)
        return 2
    runs = _paused_promotions(args.version)
    if not runs:
        return _already_decided(args.version, account, decision)
    run = runs[0]
    status = promotion_status(args.version)
    mine = status.decided_by(account) if status is not None and str(status.flow_run_id) == str(run.id) else None
    if mine is not None and mine.decision == decision:
        print(f"eve@{args.version}: already {decision}d by {account} at {_when(mine.decided_at)}; "
              "waiting for another reviewer")
        return 0
    pause_key = run.state.state_details.pause_key
    with get_client(sync_client=True) as client:
        result = client.resume_flow_run(run.id, run_input={"decision": decision, "comment": comment})
    if result.status != SetStateStatus.ACCEPT:
        reason = getattr(result.details, "reason", None) or result.status.value
        print(f"eve promote: the Prefect server did not take the decision: {reason}", file=sys.stderr)
        return 1
    if args.no_wait:
        print(f"sent {decision} as {account} to {run.name}; the platform judges it against the policy "
              "(`eve promote pending`, `eve audit show --last 3`)")
        return 0
    verdict = _wait_for_verdict(run.id, pause_key, VERDICT_WAIT_SECONDS)
    if verdict is None:
        print(f"sent {decision} as {account} to {run.name}, but the platform gave no verdict within "
              f"{VERDICT_WAIT_SECONDS:.0f} s (is the worker running? see `eve promote pending`, `eve audit show --last 3`)",
              file=sys.stderr)
        return 3
    signed = verdict_signed(verdict)
    if signed is False:
        print(f"eve promote: the verdict on {run.name} is not signed by the platform; check `eve audit show --last 3`",
              file=sys.stderr)
        return 1
    note = "" if signed else " (verdict not checked: the platform's public key is not on this machine)"
    if not verdict.accepted:
        print(f"refused: the platform did not accept {decision} by {verdict.account or account} for {run.name}: "
              f"{'; '.join(verdict.reasons)}{note}", file=sys.stderr)
        return 1
    outcome = {"approved": f"approved; production moves to eve@{args.version}",
               "rejected": "rejected; production stays as it is",
               "waiting": "accepted; the policy needs another reviewer's approval too"}[verdict.status]
    print(f"{decision} by {verdict.account} accepted for {run.name}: {outcome}{note}")
    return 0


def _request(args: argparse.Namespace) -> int:
    from tasks.registry import ModelRegistry

    registered = [v.version for v in ModelRegistry.default().show()]
    if args.version not in registered:
        print(f"eve promote: eve@{args.version} is not registered (registered: {', '.join(registered) or 'none'})",
              file=sys.stderr)
        return 1
    _login(args.user)
    from tasks.promotion import PromotionRequest, evidence_from_registry, start_promotion

    request = PromotionRequest(candidate_version=args.version, evidence=evidence_from_registry(args.version))
    run_id = start_promotion.fn(request)
    print(f"promotion of {args.version} requested (flow run {run_id}); it waits for a reviewer in the UI")
    return 0


def _complete(args: argparse.Namespace) -> int:
    from tasks.promotion import complete_promotion
    from tasks.registry import RegistryError

    try:
        tag = complete_promotion(args.version)
    except RegistryError as error:
        print(f"not completed: {error}", file=sys.stderr)
        return 1
    print(f"production holds {args.version} ({tag})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("promote", help="answer, request or complete promotions")
    actions = parser.add_subparsers(dest="action", required=True)
    pending = actions.add_parser("pending", help="list promotions waiting for a decision")
    pending.add_argument("--user", help="log in as this account (else PREFECT_API_AUTH_STRING or the local CLI account)")
    pending.set_defaults(func=_pending)
    for decision in ("approve", "reject"):
        sub = actions.add_parser(decision, help=f"{decision} a waiting promotion as the authenticated account")
        sub.add_argument("version", help="candidate version, e.g. v0.1.0")
        sub.add_argument("--comment", required=True, help="why (required for both outcomes)")
        sub.add_argument("--user", help="log in as this account (asks for the password)")
        sub.add_argument("--no-wait", action="store_true",
                         help="send it and exit, without waiting for the platform's verdict")
        sub.set_defaults(func=lambda args, d=decision: _decide(args, d))
    request = actions.add_parser("request", help="request the promotion of a registered version (a rollback if it "
                                                 "held production before)")
    request.add_argument("version")
    request.add_argument("--user", help="log in as this account (the requester)")
    request.set_defaults(func=_request)
    complete = actions.add_parser("complete", help="finish an approved promotion whose assignment was interrupted")
    complete.add_argument("version")
    complete.set_defaults(func=_complete)
