"""``eve deploy``: the work pool, every deployment of prefect.yaml, and a worker, in one command.

    eve deploy                          # the deployments run the configurations prefect.yaml names
    eve deploy --config retrain.yaml    # the retrain deployments run this file instead
    eve deploy --no-worker              # a worker runs elsewhere (a SLURM login node, a pod)

It uses the platform's Prefect server (started when ``PREFECT_API_URL`` names none), reads and
validates every configuration a deployment names before anything is applied (exit 2 naming the
deployment and the field), prints each source that is not there yet as a warning, then creates the
``eve-local`` process pool, applies the deployments and starts the worker that runs their scheduled
and triggered runs. Exit codes: 0 applied; 2 a configuration was refused; 1 the server could not be
reached.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eve_model.exit_codes import ExitCode


def run(args: argparse.Namespace) -> int:
    from flows.deployments import deployment_configs, deployment_specs
    from flows.parameter_files import ParameterFileError
    from flows.plan import plan_retrain
    from flows.recipes import named_config

    config = str(args.config.resolve()) if args.config else None
    try:
        configs = deployment_configs(args.only or None, config)
    except (ParameterFileError, ValueError, OSError) as error:
        print(f"eve deploy: {error}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    unknown = sorted(set(args.only or []) - set(deployment_specs()))
    if unknown:
        print(f"eve deploy: no deployment {unknown} in prefect.yaml; known: {', '.join(deployment_specs())}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    for name in sorted(set(configs.values())):
        for problem in plan_retrain(named_config(name)).problems:
            print(f"warning: config {name}: {problem}")

    from tasks.orchestration import PrefectServerError, ensure_prefect_server, ensure_work_pool, ensure_worker, ui_url

    try:
        api_url = ensure_prefect_server()
        ensure_work_pool()
    except PrefectServerError as error:
        print(f"eve deploy: {error}", file=sys.stderr)
        return ExitCode.FAILED
    from flows.deployments import apply_deployments  # after the server: Prefect reads its URL on import

    applied = apply_deployments(args.only or None, config=config)
    specs = deployment_specs()
    for full_name in applied:
        name = full_name.split("/", 1)[1]
        spec = specs[name]
        when = ", ".join([f"cron {s['cron']} {s.get('timezone', '')}".rstrip() for s in spec.get("schedules") or []]
                         + [f"on {', '.join(t.get('expect') or [])} ({t['match'].get('prefect.resource.id')})"
                            for t in spec.get("triggers") or []]) or "on demand"
        print(f"deployment {full_name:<38} config {configs.get(name, '-'):<28} {when}")
    if not args.no_worker:
        worker = ensure_worker()
        print(f"worker: pool eve-local (pid {worker['pid']}, log {worker['log']}); `eve server stop` stops it")
    print(f"Prefect UI {ui_url(api_url)}/deployments")
    return ExitCode.COMPLETED


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("deploy", help="create the work pool, apply prefect.yaml's deployments, start a worker")
    parser.add_argument("--config", type=Path, help="the configuration file the retrain deployments run (default: the ones prefect.yaml names)")
    parser.add_argument("--only", action="append", metavar="NAME", help="apply only this deployment (repeatable)")
    parser.add_argument("--no-worker", action="store_true", help="do not start the local process worker")
    parser.set_defaults(func=run)
