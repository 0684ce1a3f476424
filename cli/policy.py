"""``eve policy show|set``: the approval policy, platform configuration signed with the platform key.

eve policy set --model eve --reviewers bob,carol --approvals 2 --timeout-hours 72 --by ops-anna
eve policy show

A promotion records the rule in force when it is requested; changing the policy affects promotions
requested afterwards. Needs the platform key (``tasks/policy.py``); every change is audited.
"""

from __future__ import annotations

import argparse
import json
import sys


def _show(args: argparse.Namespace) -> int:
    from tasks.policy import PolicyError, load_policy

    try:
        policy = load_policy()
    except PolicyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(policy.model_dump(mode="json"), indent=2))
    return 0


def _set(args: argparse.Namespace) -> int:
    from tasks import audit
    from tasks.policy import PolicyError, PromotionPolicy, ReviewRule, load_policy, save_policy

    try:
        current = load_policy()
    except PolicyError:
        current = PromotionPolicy(models={})
    try:
        rule = ReviewRule(
            allowed_reviewers=[name.strip() for name in args.reviewers.split(",") if name.strip()],
            required_approvals=args.approvals,
            two_person_rule=args.two_person,
            decision_timeout_seconds=int(args.timeout_hours * 3600),
            decision_validity_seconds=int(args.validity_hours * 3600),
        )
    except ValueError as error:
        from cli.main import describe_error

        print(f"eve policy set: {describe_error(error)}", file=sys.stderr)
        return 2
    policy = current.model_copy(update={"models": {**current.models, args.model: rule}})
    if args.poll_seconds:
        policy.poll_interval_seconds = args.poll_seconds
    document = save_policy(policy, updated_by=args.by)
    audit.AuditLog.default().append(
        audit.POLICY_UPDATED, actor=args.by, subject=args.model,
        payload={"rule": rule.model_dump(mode="json"), "policy_sha256": policy.sha256()},
    )
    print(f"policy for {args.model} set by {document.updated_by}: reviewers {', '.join(rule.allowed_reviewers)}, "
          f"{rule.approvals_needed} approval(s), {args.timeout_hours:g} h to decide")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("policy", help="who may approve which model (platform configuration)")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("show", help="print the policy after checking its signature").set_defaults(func=_show)
    setter = actions.add_parser("set", help="set one model's review rule")
    setter.add_argument("--model", default="eve", help="registry artifact, or * for every model without a rule")
    setter.add_argument("--reviewers", required=True, help="comma-separated accounts allowed to decide")
    setter.add_argument("--approvals", type=int, default=1, help="distinct approvals needed")
    setter.add_argument("--two-person", action="store_true", help="two-person rule: at least two approvals")
    setter.add_argument("--timeout-hours", type=float, default=72.0, help="time to decide; then rejected")
    setter.add_argument("--validity-hours", type=float, default=24.0, help="how long an approval can be used")
    setter.add_argument("--poll-seconds", type=int, default=0, help="how often a waiting promotion polls")
    setter.add_argument("--by", required=True, help="who sets it (recorded)")
    setter.set_defaults(func=_set)
