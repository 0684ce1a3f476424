"""``eve registry show`` and ``eve registry history``: versions, stages and who approved what.

eve registry show [--json]
eve registry show VERSION     # the version's model card: intended use, training data, evaluation, approval
eve registry history [--json]
eve registry recover          # complete or roll back an interrupted production assignment now
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("registry", help="model registry: versions, stages, approvals")
    commands = parser.add_subparsers(dest="registry_command", metavar="ACTION", required=True)
    show = commands.add_parser("show", help="registered versions and the stages they hold, or one version's model card")
    show.add_argument("version", nargs="?", help="a registered version (v0.1.0 or eve@v0.1.0): print its model card")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show.set_defaults(func=show_versions)
    history = commands.add_parser("history", help="every registration and stage move, with approvals")
    history.add_argument("--json", action="store_true", help="print JSON instead of a table")
    history.set_defaults(func=show_history)
    recover = commands.add_parser("recover", help="complete or roll back an interrupted production assignment")
    recover.set_defaults(func=recover_assignments)


def recover_assignments(args: argparse.Namespace) -> int:
    from tasks.registry import ModelRegistry

    done = ModelRegistry.default().recover()
    print("\n".join(done) if done else "nothing was interrupted")
    return 0


def show_card(version: str) -> int:
    """Print a registered version's current model card."""
    from tasks.registry import ModelRegistry

    registry = ModelRegistry.default()
    version = version.split("@")[-1]
    registered = [v.version for v in registry.show()]
    if version not in registered:
        print(f"eve registry show: eve@{version} is not registered (registered: {', '.join(registered) or 'none'})",
              file=sys.stderr)
        return 1
    card = registry.model_card(version)
    if card is None:
        print(f"eve registry show: eve@{version} has no model card (registered before the registry kept cards)",
              file=sys.stderr)
        return 1
    print(card, end="")
    return 0


def show_versions(args: argparse.Namespace) -> int:
    from tasks.registry import ModelRegistry

    if args.version:
        return show_card(args.version)
    versions = ModelRegistry.default().show()
    if args.json:
        print(json.dumps([v.model_dump() for v in versions], indent=2))
        return 0
    if not versions:
        print("no registered versions")
        return 0
    print(f"{'version':<10} {'stages':<14} {'registered (UTC)':<26} commit")
    for v in versions:
        print(f"{v.version:<10} {','.join(v.stages) or '-':<14} {v.created_at:<26} {v.commit[:12]}")
    print("(`eve registry show VERSION` prints a version's model card)")
    return 0


def show_history(args: argparse.Namespace) -> int:
    from tasks.registry import ModelRegistry

    events = ModelRegistry.default().history()
    if args.json:
        print(json.dumps([e.model_dump() for e in events], indent=2))
        return 0
    if not events:
        print("no registry events")
        return 0
    for e in events:
        line = f"{e.timestamp}  {e.event:<13} {e.version or '-':<9} {e.stage or '':<11}"
        if e.reviewer:
            evidence = (e.evidence_sha256 or "?")[:12]
            what = "rollback approved" if e.kind == "rollback" else "approved"
            line += f" {what} by {e.reviewer}: {e.comment!r} (evidence {evidence})"
        print(line)
    return 0
