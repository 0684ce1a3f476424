"""``eve cluster``: a real SLURM cluster on this machine (munged + slurmctld + slurmd on loopback).

    eve cluster up [--nodes N] [--base-dir DIR]   start (idempotent); prints the SLURM_CONF to export
    eve cluster status [--base-dir DIR]           exit 0 when up, 3 when down
    eve cluster down [--base-dir DIR] [--purge]   cancel its jobs, stop its daemons (pid files only)

A thin front end over ``infra/slurm/cluster.sh``; ``--nodes N`` emulates N nodes (one slurmd each,
2 fake a100 GPUs each for scheduling). Accounting runs as on a real cluster (slurmdbd on a private
MariaDB, so ``sacct`` works). Installs the Debian packages (munge, slurm-client, slurmctld, slurmd,
slurmdbd, mariadb-server) when missing, which needs root.
Submit to it with ``get_backend("slurm", slurm_conf=<base-dir>/etc/slurm.conf)``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

CLUSTER_SCRIPT = Path(__file__).resolve().parent.parent / "infra" / "slurm" / "cluster.sh"
DEFAULT_BASE_DIR = "/tmp/eve-slurm"


def _run_cluster_script(args: argparse.Namespace) -> int:
    argv = ["bash", str(CLUSTER_SCRIPT), args.action, "--base-dir", str(args.base_dir)]
    if args.action == "up":
        argv += ["--nodes", str(args.nodes)]
    if getattr(args, "purge", False):
        argv.append("--purge")
    return subprocess.run(argv, check=False).returncode


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("cluster", help="a local SLURM cluster on loopback (up/down/status)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    base_dir_default = Path(os.environ.get("EVE_SLURM_BASE_DIR", DEFAULT_BASE_DIR))
    for action, text in (
        ("up", "start the cluster (idempotent)"),
        ("down", "cancel its jobs and stop its daemons"),
        ("status", "show daemons and nodes; exit 3 when down"),
    ):
        sub = actions.add_parser(action, help=text)
        sub.add_argument("--base-dir", type=Path, default=base_dir_default,
                         help=f"config, state, logs and pid files (default {base_dir_default})")
        if action == "up":
            sub.add_argument("--nodes", type=int, default=1, help="emulated nodes (one slurmd each)")
        if action == "down":
            sub.add_argument("--purge", action="store_true", help="also delete the base directory")
        sub.set_defaults(func=_run_cluster_script)
