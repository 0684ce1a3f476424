"""``eve reproduce``: re-execute a registered version from its lineage manifest and compare every output
with its recorded hash (docs/reproduce.md).

    eve reproduce eve@v0.1.0                       # everything: data, captions, gates, every stage
    eve reproduce eve@v0.1.0 --through captions    # stop after a level (data|captions|gates|stage-1|stage-2|stage-3|all)

When the version was trained by another commit of the platform, that commit is checked out in a
separate ``git worktree`` under ``<home>/reproduce/`` and the command runs again there. Exits 1 at the
first mismatch, naming the artifact; 0 when every re-executed artifact is identical (rows that could
not be re-run say why).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    from tasks.reproduce import LEVELS

    parser = subparsers.add_parser("reproduce", help="re-execute a registered version from its lineage and compare hashes")
    parser.add_argument("model_ref", help="model version, e.g. eve@v0.1.0")
    parser.add_argument("--through", choices=LEVELS, default="all", help="last level to re-execute (default all)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from eve_model.exit_codes import ExitCode
    from tasks.lineage.store import read_lineage
    from tasks.platform import PlatformSettings
    from tasks.reproduce import (
        CHECKED_OUT_ENV,
        code_revision_plan,
        format_report,
        prepare_worktree,
        publish_report,
        reproduce_version,
        running_in_checked_out_revision,
    )

    settings = PlatformSettings.load()
    try:
        manifest = read_lineage(settings.registry_dir, args.model_ref)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return int(ExitCode.CONFIG_ERROR)
    if not running_in_checked_out_revision():
        action, reason = code_revision_plan(manifest.code_revision)
        if action == "worktree":
            try:
                worktree = prepare_worktree(manifest.code_revision, settings)
            except RuntimeError as error:
                print(f"{reason}\nCANNOT RE-RUN {args.model_ref}: {error}", flush=True)
                return int(ExitCode.FAILED)
            print(f"{reason}: checked it out in {worktree}; re-running `eve reproduce` there", flush=True)
            if not (worktree / "cli" / "reproduce.py").exists():
                print(f"CANNOT RE-RUN {args.model_ref}: revision {manifest.code_revision} predates `eve reproduce`",
                      flush=True)
                return int(ExitCode.FAILED)
            environment = {**os.environ, "PYTHONPATH": str(worktree), CHECKED_OUT_ENV: manifest.code_revision}
            command = [sys.executable, "-m", "cli.main", "reproduce", args.model_ref, "--through", args.through]
            return subprocess.run(command, cwd=worktree, env=environment, check=False).returncode
        if action == "dirty":
            print(f"note: {reason}", flush=True)
    report = reproduce_version(manifest, args.through, settings,
                               on_row=lambda row: print(f"  {row.verdict.value:<16} {row.level:<9} {row.artifact}", flush=True))
    print(format_report(report))
    try:
        _connect_to_a_running_server(settings)
        key = publish_report(report)
        if key:
            print(f"published as Prefect artifact {key}")
    except Exception as error:  # the report is printed either way; the server may be down
        print(f"note: could not publish the report to Prefect: {error}", file=sys.stderr)
    return int(ExitCode.FAILED if report.first_mismatch else ExitCode.COMPLETED)


def _connect_to_a_running_server(settings) -> None:
    """Use ``PREFECT_API_URL`` when set, else this home's local server when it is running; never start one
    (without a server the report is printed only)."""
    from tasks.orchestration import ensure_prefect_server, running_local_server

    if os.environ.get("PREFECT_API_URL") or running_local_server(settings) is not None:
        ensure_prefect_server(settings)
