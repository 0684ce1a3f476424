"""``eve promote pending|approve|reject``: answer a paused promotion from the terminal.

The same form as the Prefect UI's Resume button: the decision goes to the paused run, and the
platform's policy (allowed reviewers, no self-approval, comment required) judges it there.
"""

from __future__ import annotations

import argparse
import sys


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
    from tasks.orchestration import ensure_prefect_server, ui_url

    base = ui_url(ensure_prefect_server())
    runs = _paused_promotions()
    if not runs:
        print("no promotion is waiting for a decision")
        return 0
    for run in runs:
        print(f"{run.name}\t{base}/runs/flow-run/{run.id}")
    return 0


def _decide(args: argparse.Namespace, decision: str) -> int:
    from tasks.orchestration import ensure_prefect_server

    ensure_prefect_server()  # before Prefect reads its settings: PREFECT_API_URL must be set first
    from prefect.flow_runs import resume_flow_run
    runs = _paused_promotions(args.version)
    if not runs:
        print(f"no paused promotion for {args.version} (see `eve promote pending`)", file=sys.stderr)
        return 1
    resume_flow_run(runs[0].id, run_input={"decision": decision, "reviewer": args.reviewer, "comment": args.comment})
    print(f"sent {decision} by {args.reviewer} to {runs[0].name}; the platform checks it against the policy "
          "(see `eve registry history` and `eve audit show`)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("promote", help="answer a promotion that waits for a reviewer")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("pending", help="list promotions waiting for a decision").set_defaults(func=_pending)
    for decision in ("approve", "reject"):
        sub = actions.add_parser(decision, help=f"{decision} a waiting promotion")
        sub.add_argument("version", help="candidate version, e.g. v0.1.0")
        sub.add_argument("--reviewer", required=True, help="who decides (must be an allowed reviewer)")
        sub.add_argument("--comment", required=True, help="why (required for both outcomes)")
        sub.set_defaults(func=lambda args, d=decision: _decide(args, d))
