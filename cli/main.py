"""Entry point of the ``eve`` console script.

Each command group lives in its own module under ``cli/`` and exposes
``register(subparsers)``; the module is imported only if present so that a slow import
(torch, prefect) is paid only by the commands that need it.

No command ends in a traceback. A command reports what it knows how to report and returns its exit
code; whatever else escapes it is reported in one line by :func:`main`: exit 2 for input the command
could not use (a bad value, a missing file: ``ValueError``, ``LookupError``, ``FileNotFoundError``...),
1 for anything else, 130 on Ctrl-C. ``EVE_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

# Order is the order shown in `eve --help`.
COMMAND_MODULES = [
    "demo",
    "server",
    "data",
    "quality",
    "train",
    "retrain",
    "convert",
    "deploy",
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


DEBUG_ENV = "EVE_DEBUG"
"""Set to 1 to see the traceback of a command that fails."""

USAGE_EXIT = 2
"""Exit code of a command given input it cannot use (as argparse's own usage errors)."""


def version_text() -> str:
    """``eve <version> (platform commit <commit>, model code <code-tree revision>)``: the package, the
    checkout (``eve_model.identity.platform_commit``) and the revision that keys the stage cache."""
    from importlib.metadata import PackageNotFoundError, version

    from eve_model.identity import code_tree_revision, platform_commit

    try:
        installed = version("eve-platform")
    except PackageNotFoundError:
        installed = "unknown"
    commit = platform_commit()
    shown = commit[:12] + ("+dirty" if commit.endswith("+dirty") else "")
    return f"eve {installed} (platform commit {shown}, model code {code_tree_revision()})"


class _VersionAction(argparse.Action):
    """``--version`` computed only when asked (it runs git)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit(0)


def _is_usage_error(error: BaseException) -> bool:
    """Input the command could not use, as opposed to a failure while doing its work."""
    return isinstance(error, (ValueError, LookupError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                              FileExistsError, PermissionError))


_PLATFORM_PACKAGES = ("tasks.", "flows.", "eve_model.", "cli.")


def describe_error(error: BaseException) -> str:
    """The message of ``error`` for a person: pydantic's validation errors as ``field: problem`` lines."""
    from pydantic import ValidationError

    if isinstance(error, ValidationError):
        return "; ".join(f"{'.'.join(str(part) for part in problem['loc']) or 'value'}: {problem['msg']}"
                         for problem in error.errors())
    text = str(error).strip() or type(error).__name__
    return text.replace("\n", "\n  ")


def _report_failure(command: str, error: BaseException) -> int:
    """One message for an exception that escaped a command; its exit code."""
    import httpx

    if isinstance(error, httpx.TransportError):
        url = os.environ.get("PREFECT_API_URL") or "the configured Prefect server"
        print(f"eve {command}: cannot reach {url} ({type(error).__name__}: {error}); is it running? "
              "(`eve server status`, `eve server start`)", file=sys.stderr)
        return 1
    if isinstance(error, httpx.HTTPStatusError) and error.response.status_code in (401, 403):
        print(f"eve {command}: the Prefect server refused the request ({error.response.status_code}): log in with "
              "--user NAME or PREFECT_API_AUTH_STRING=name:password", file=sys.stderr)
        return 1
    usage = _is_usage_error(error)
    # The platform's own errors are written for the person reading them; anything else is named by its type.
    ours = type(error).__module__.startswith(_PLATFORM_PACKAGES)
    kind = "" if usage or ours else f"failed: {type(error).__name__}: "
    print(f"eve {command}: {kind}{describe_error(error)}", file=sys.stderr)
    if not (usage or ours):
        print(f"  ({DEBUG_ENV}=1 shows the traceback)", file=sys.stderr)
    return USAGE_EXIT if usage else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eve", description="EVE retraining platform")
    parser.add_argument("--version", action=_VersionAction, help="print the version and the code revisions, and exit")
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
        return USAGE_EXIT
    command = " ".join(filter(None, [args.command, *(getattr(args, name, None) for name in _ACTION_DESTS)]))
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print(f"eve {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - every failure becomes a message, never a traceback
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        return _report_failure(command, error)
    return int(result or 0)


_ACTION_DESTS = ("action", "data_command", "quality_command", "registry_command", "audit_command")
"""Where the command groups keep their sub-command (for the name in a message)."""


if __name__ == "__main__":
    sys.exit(main())
