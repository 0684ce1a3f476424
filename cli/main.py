"""Entry point of the ``eve`` console script.

Each command group lives in its own module under ``cli/`` and exposes
``register(subparsers)``; the module is imported only if present so that a slow import
(torch, prefect) is paid only by the commands that need it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# Order is the order shown in `eve --help`.
COMMAND_MODULES = [
    "demo",
    "server",
    "data",
    "quality",
    "train",
    "retrain",
    "serve",
    "cluster",
    "evaluate",
    "promote",
    "registry",
    "lineage",
    "reproduce",
    "audit",
    "users",
    "policy",
    "keys",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eve", description="EVE retraining platform")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module_name = f"cli.{name}"
        if importlib.util.find_spec(module_name) is None:
            continue
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
