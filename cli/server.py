"""``eve server start|stop|status|restart``: the platform's local Prefect server (authenticated) and worker."""

from __future__ import annotations

import argparse


def start_services() -> str:
    """The server (unless PREFECT_API_URL names one), the platform's process worker, the promotion
    deployment it runs and the demo's own deployment (rerun it from the UI; ``eve deploy`` applies
    the rest); returns the API URL."""
    from tasks.orchestration import ensure_prefect_server, ensure_worker

    api_url = ensure_prefect_server()
    ensure_worker()
    from flows.deployments import apply_deployments  # after the server: Prefect reads its URL on import

    apply_deployments(["promote", "demo-retrain"])
    return api_url


def _start(args: argparse.Namespace) -> int:
    from tasks.orchestration import ui_url

    api_url = start_services()
    print(f"Prefect API {api_url}\nPrefect UI  {ui_url(api_url)}  (log in with name:password; "
          "`eve users add NAME` creates an account)\nworker: pool eve-local (promotions wait there)")
    return 0


def _stop(args: argparse.Namespace) -> int:
    from tasks.orchestration import stop_local_server

    print("stopped the local Prefect server and worker" if stop_local_server() else "no local Prefect server was running")
    return 0


def _restart(args: argparse.Namespace) -> int:
    from tasks.orchestration import restart_local_server

    state = restart_local_server()
    print(f"restarted the local Prefect server (pid {state['pid']}, UI {state['ui_url']}); waiting promotions keep waiting")
    return 0


def _status(args: argparse.Namespace) -> int:
    from tasks.orchestration import running_local_server
    from tasks.platform import PlatformSettings

    state = running_local_server(PlatformSettings.load())
    if state is None:
        print("no local Prefect server is running")
        return 1
    print(f"running: pid {state['pid']}, UI {state['ui_url']}, log {state['log']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("server", help="start, stop or inspect the local Prefect server")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("start", help="start it (or reuse a running one)").set_defaults(func=_start)
    actions.add_parser("stop", help="stop the server and worker this platform home started").set_defaults(func=_stop)
    actions.add_parser("restart", help="restart the server only (same port and database)").set_defaults(func=_restart)
    actions.add_parser("status", help="is it running, and where").set_defaults(func=_status)
