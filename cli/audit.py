"""``eve audit verify|show|repair``: the audit log of promotions, checked against the registry.

eve audit verify            # exit 1 and name the first broken link: the log, its anchors, the tags, the lineage
eve audit show [--last N] [--json]   # whole payloads; N >= 1
eve audit repair            # set a torn last line aside as evidence (an append that did not finish)
"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("audit", help="audit log of promotion requests, decisions and stage moves")
    commands = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = commands.add_parser(
        "verify", help="check the log, its anchors, every registry tag and the lineage approvals; exit 1 on a break"
    )
    verify.set_defaults(func=verify_log)
    show = commands.add_parser("show", help="print the records")
    show.add_argument("--last", type=_positive_count, default=None, metavar="N", help="only the last N records")
    show.add_argument("--json", action="store_true", help="one JSON record per line")
    show.set_defaults(func=show_log)
    repair = commands.add_parser("repair", help="set a torn last line aside (kept as evidence) and record it")
    repair.add_argument("--by", default="operator", help="who repairs (recorded)")
    repair.set_defaults(func=repair_log)


def _positive_count(text: str) -> int:
    """``--last N``: a whole number of at least 1 (``--last 0`` or ``-1`` would silently show something else)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def verify_log(args: argparse.Namespace) -> int:
    from tasks.verification import verify_platform

    report = verify_platform()
    for note in report.notes:
        print(f"note: {note}")
    if report.ok:
        print(
            f"ok: {report.num_records} records, chain and signatures intact, head {report.head_hash or '-'}; "
            f"{report.num_anchors} anchors and {report.num_tags} registry tags match the log; every stage move is "
            "backed by approvals the platform accepted"
        )
        return 0
    print(f"FAILED: first broken link: {report.problems[0]}")
    for problem in report.problems[1:]:
        print(f"  also: {problem}")
    return 1


def show_log(args: argparse.Namespace) -> int:
    from tasks.audit import AuditLog, scan_log

    log = AuditLog.default()
    scan = scan_log(log.path)
    lines = scan.lines[-args.last :] if args.last else scan.lines
    for line in lines:
        record = line.record
        if record is None:
            print(f"{'?':>5} line {line.line_number}: {line.problem}")
        elif args.json:
            print(json.dumps(record.model_dump(mode="json"), sort_keys=True))
        else:
            # The whole payload: an auditor reads it, nothing is cut.
            print(
                f"{record.seq:>5} {record.recorded_at} {record.event:<28} {record.actor or '-':<12} "
                f"{record.subject or '-':<12} {json.dumps(record.payload, sort_keys=True)}"
            )
    if scan.torn_bytes:
        print(f"  torn last line: {scan.torn_bytes} bytes without a newline (`eve audit repair`)")
    return 0


def repair_log(args: argparse.Namespace) -> int:
    from tasks.audit import AuditIntegrityError, AuditLog
    from tasks.registry import ModelRegistry

    log = AuditLog.default()
    try:
        print(log.repair_torn_tail(actor=args.by))
    except AuditIntegrityError as error:
        print(f"not repaired: {error}")
        return 1
    anchor = ModelRegistry.default().anchor_audit_head()
    if anchor:
        print(f"audit head anchored in the registry as {anchor}")
    return 0
