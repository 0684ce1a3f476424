"""The local Prefect server of the embedded default (design.md 3.1).

Teams point ``PREFECT_API_URL`` at their own server and nothing here starts. Without it, the
platform starts one Prefect server on 127.0.0.1 with SQLite under the platform home, detached
so that it outlives the command that started it (a paused promotion waits there for a
reviewer), and records its PID and URL so later commands reuse it and ``eve server stop``
stops exactly that process and nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from eve_model.training.runtime import free_loopback_port
from tasks.platform import PlatformSettings

SERVER_STATE_FILE = "server.json"
DEFAULT_PORT = 4200


class PrefectServerError(RuntimeError):
    """The local Prefect server could not be started or reached."""


def _healthy(api_url: str, timeout_seconds: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout_seconds) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def prefect_home(settings: PlatformSettings) -> Path:
    return settings.path("prefect")


def _state_path(settings: PlatformSettings) -> Path:
    return prefect_home(settings) / SERVER_STATE_FILE


def running_local_server(settings: PlatformSettings) -> dict | None:
    """The recorded local server when its process is alive and healthy, else None."""
    path = _state_path(settings)
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    if _pid_alive(state["pid"]) and _healthy(state["api_url"]):
        return state
    return None


def ensure_prefect_server(settings: PlatformSettings | None = None, startup_timeout_seconds: float = 90.0) -> str:
    """The API URL to use, starting the local server when none is configured.

    Sets ``PREFECT_API_URL`` (and ``PREFECT_HOME`` for a local server) in this process's
    environment so that flows run in-process talk to it.
    """
    settings = settings or PlatformSettings.load()
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        if not _healthy(configured, timeout_seconds=5.0):
            raise PrefectServerError(
                f"PREFECT_API_URL={configured} does not answer /health; start that server or unset the "
                "variable to use a local one"
            )
        return configured

    home = prefect_home(settings)
    os.environ["PREFECT_HOME"] = str(home)
    state = running_local_server(settings)
    if state is None:
        port = DEFAULT_PORT if _port_free(DEFAULT_PORT) else free_loopback_port()
        api_url = f"http://127.0.0.1:{port}/api"
        log_path = home / "server.log"
        env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_API_URL": api_url,
        }
        env.pop("PREFECT_API_URL", None)
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # outlives this command: a paused promotion waits on it
            )
        deadline = time.monotonic() + startup_timeout_seconds
        while not _healthy(api_url):
            if process.poll() is not None:
                raise PrefectServerError(
                    f"the local Prefect server exited with code {process.returncode}; see {log_path}"
                )
            if time.monotonic() > deadline:
                process.terminate()
                raise PrefectServerError(f"the local Prefect server was not healthy after "
                                         f"{startup_timeout_seconds:.0f} s; see {log_path}")
            time.sleep(0.5)
        state = {"pid": process.pid, "api_url": api_url, "ui_url": api_url.removesuffix("/api"), "log": str(log_path)}
        _state_path(settings).write_text(json.dumps(state))
    os.environ["PREFECT_API_URL"] = state["api_url"]
    return state["api_url"]


def ui_url(api_url: str) -> str:
    return api_url.rstrip("/").removesuffix("/api")


def stop_local_server(settings: PlatformSettings | None = None, timeout_seconds: float = 20.0) -> bool:
    """Stop the server this platform home started (and only it). True if one was stopped."""
    settings = settings or PlatformSettings.load()
    path = _state_path(settings)
    if not path.exists():
        return False
    state = json.loads(path.read_text())
    pid = state["pid"]
    stopped = False
    if _pid_alive(pid):
        os.killpg(pid, signal.SIGTERM)  # the server runs uvicorn workers in its own session
        deadline = time.monotonic() + timeout_seconds
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _pid_alive(pid):
            os.killpg(pid, signal.SIGKILL)
        stopped = True
    path.unlink(missing_ok=True)
    return stopped
