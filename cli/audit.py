"""``eve audit verify`` and ``eve audit show``: the hash-chained audit log of promotions.

eve audit verify            # exit 1 and name each broken record if the log was edited, cut or reordered
eve audit show [--last N] [--json]
"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("audit", help="audit log of promotion requests, decisions and stage moves")
    commands = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = commands.add_parser("verify", help="check the hash chain; exit 1 on any edit, deletion or reordering")
    verify.set_defaults(func=verify_log)
    show = commands.add_parser("show", help="print the records")
    show.add_argument("--last", type=int, default=0, help="only the last N records")
    show.add_argument("--json", action="store_true", help="one JSON record per line")
    show.set_defaults(func=show_log)


def verify_log(args: argparse.Namespace) -> int:
    from tasks.audit import AuditLog
    from tasks.registry import ModelRegistry

    log = AuditLog.default()
    result = log.verify()
    registry = ModelRegistry.default()
    # The production tags in the registry name the decisions behind them; check those still exist.
    problems = result.problems + registry.verify_against_audit()
    if not problems:
        print(
            f"ok: {result.num_records} records, chain intact, head {result.head_hash or '-'} ({log.path}); "
            "every production assignment is backed by an audited approval"
        )
        return 0
    print(f"TAMPERED: {len(problems)} problem(s) in {log.path}")
    for problem in problems:
        print(f"  {problem}")
    return 1


def show_log(args: argparse.Namespace) -> int:
    from tasks.audit import AuditLog

    records = AuditLog.default().records()
    if args.last:
        records = records[-args.last :]
    for record in records:
        if args.json:
            print(json.dumps(record.model_dump(), sort_keys=True))
        else:
            print(
                f"{record.seq:>5} {record.recorded_at} {record.event:<28} {record.actor or '-':<12} "
                f"{record.subject or '-':<12} {json.dumps(record.payload, sort_keys=True)[:120]}"
            )
    return 0
