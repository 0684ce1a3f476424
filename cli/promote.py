"""``eve promote pending|approve|reject|request|complete``: promotions from the terminal.

eve promote pending
eve promote approve v0.2.0 --comment "why" [--user carol]     # decides as the authenticated account
eve promote request v0.1.0                                      # promote (or roll back to) a registered version
eve promote complete v0.2.0                                     # finish an approved promotion whose step was interrupted

A decision goes to the paused run exactly like the Prefect UI's Resume button, through the
platform's server, which records the account that sent it: ``PREFECT_API_AUTH_STRING=name:password``,
or ``--user NAME`` (the password is asked for, or read from stdin). The platform's policy judges it
there (allowed reviewer, not the requester, comment given).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys


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
        runs = [run for run in runs if run.name == f"promote-eve@{version}"]
    return runs


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


def _decide(args: argparse.Namespace, decision: str) -> int:
    _login(args.user)
    from prefect.flow_runs import resume_flow_run
    from tasks.accounts import CLI_ACCOUNT

    account = os.environ.get("PREFECT_API_AUTH_STRING", "").partition(":")[0]
    if account == CLI_ACCOUNT:
        print(f"you are not logged in as a person ({CLI_ACCOUNT} is the platform's service account, which never "
              "reviews): pass --user NAME or set PREFECT_API_AUTH_STRING=name:password", file=sys.stderr)
        return 2
    runs = _paused_promotions(args.version)
    if not runs:
        print(f"no paused promotion for {args.version} (see `eve promote pending`)", file=sys.stderr)
        return 1
    resume_flow_run(runs[0].id, run_input={"decision": decision, "comment": args.comment})
    print(f"sent {decision} as {account} to {runs[0].name}; the platform checks it against the policy "
          "(see `eve promote pending` and `eve audit show --last 3`)")
    return 0


def _request(args: argparse.Namespace) -> int:
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
        sub.set_defaults(func=lambda args, d=decision: _decide(args, d))
    request = actions.add_parser("request", help="request the promotion of a registered version (a rollback if it "
                                                 "held production before)")
    request.add_argument("version")
    request.add_argument("--user", help="log in as this account (the requester)")
    request.set_defaults(func=_request)
    complete = actions.add_parser("complete", help="finish an approved promotion whose assignment was interrupted")
    complete.add_argument("version")
    complete.set_defaults(func=_complete)
