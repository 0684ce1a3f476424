"""The platform's local Prefect services: the server and the process worker (docs/operations.md).

Teams point ``PREFECT_API_URL`` at their own server and no server starts here. Without it, the
platform starts one Prefect server on 127.0.0.1 with SQLite under the platform home, detached so
that it outlives the command that started it (a paused promotion waits there for a reviewer). That
server is Prefect's app behind the platform's authenticating gateway (``tasks/gateway.py``): every
API request needs an account's credentials. The local services get service accounts
(``tasks/accounts.py``): this process and the commands it runs use ``eve-cli`` unless
``PREFECT_API_AUTH_STRING`` already names an account, the worker uses ``eve-worker``.

The worker (``prefect worker start --pool eve-local``) runs flow runs created on the platform's
deployments, such as the promotion the retrain hands over: the run waits for a reviewer in the
worker's process, not in the command that started the retrain.

Each service's identity is recorded (PID, the kernel's start time of that PID, and for the server a
random instance id on its command line), so later commands reuse it, and ``eve server stop`` stops
exactly those processes: a PID reused by another process after a reboot or a crash is never signalled.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from eve_model.training.runtime import free_loopback_port
from tasks.accounts import CLI_ACCOUNT, WORKER_ACCOUNT, AccountStore
from tasks.gateway import INSTANCE_HEADER
from tasks.platform import REPO_ROOT, PlatformSettings
from tasks.signing import KEY_NAMES, KeyRing

SERVER_STATE_FILE = "server.json"
DEFAULT_PORT = 4200


class PrefectServerError(RuntimeError):
    """The local Prefect server could not be started or reached."""


def _healthy(api_url: str, timeout_seconds: float = 2.0, instance_id: str | None = None) -> bool:
    """The server at ``api_url`` answers its health probe (and, given ``instance_id``, is that process:
    a port found free can be bound by another server before ours, which would then answer)."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout_seconds) as response:
            return response.status == 200 and (
                instance_id is None or response.headers.get(INSTANCE_HEADER) == instance_id
            )
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


def process_start_ticks(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot; /proc/<pid>/stat field 22), or
    None when no live process has that PID (a zombie that exited but was not reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])


def _command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def is_recorded_process(state: dict) -> bool:
    """True when the process recorded in ``state`` is still that same process: same PID, same kernel
    start time, and (when recorded) its instance id on the command line."""
    recorded = state.get("start_ticks")
    if recorded is None or process_start_ticks(state["pid"]) != recorded:
        return False
    instance = state.get("instance_id")
    return instance is None or instance in _command_line(state["pid"])


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
    if is_recorded_process(state) and _healthy(state["api_url"], instance_id=state.get("instance_id")):
        return state
    return None


def prepare_local_platform(settings: PlatformSettings) -> AccountStore:
    """Keys and service accounts of a local install (created once; later calls only read them)."""
    keyring = KeyRing.default(settings)
    for name in KEY_NAMES:
        keyring.ensure(name)
    accounts = AccountStore.default(settings)
    for name in (CLI_ACCOUNT, WORKER_ACCOUNT):
        accounts.service_auth_string(name)
    return accounts


def use_local_credentials(settings: PlatformSettings) -> None:
    """This process talks to the local server as ``eve-cli`` unless ``PREFECT_API_AUTH_STRING`` names
    an account already (a person's own credentials win)."""
    if not os.environ.get("PREFECT_API_AUTH_STRING"):
        os.environ["PREFECT_API_AUTH_STRING"] = AccountStore.default(settings).service_auth_string(CLI_ACCOUNT)


def ensure_prefect_server(settings: PlatformSettings | None = None, startup_timeout_seconds: float = 90.0) -> str:
    """The API URL to use, starting the local authenticating server when none is configured.

    Sets ``PREFECT_API_URL`` and the credentials (and ``PREFECT_HOME`` for a local server) in this
    process's environment so that flows run in-process talk to it.
    """
    settings = settings or PlatformSettings.load()
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        if not _healthy(configured, timeout_seconds=5.0):
            raise PrefectServerError(
                f"PREFECT_API_URL={configured} does not answer /health; start that server or unset the "
                "variable to use a local one"
            )
        _refresh_prefect_settings()  # the credentials in the environment may have just been set
        return configured

    home = prefect_home(settings)
    os.environ["PREFECT_HOME"] = str(home)
    prepare_local_platform(settings)
    state = running_local_server(settings)
    if state is None:
        port = DEFAULT_PORT if _port_free(DEFAULT_PORT) else free_loopback_port()
        state = start_local_server(settings, port, startup_timeout_seconds)
    os.environ["PREFECT_API_URL"] = state["api_url"]
    use_local_credentials(settings)
    _refresh_prefect_settings()
    return state["api_url"]


def _refresh_prefect_settings() -> None:
    # Prefect reads its settings from the environment when imported; a process that imported it
    # before the URL and credentials were known must re-read them.
    if "prefect.context" in sys.modules:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


def start_local_server(settings: PlatformSettings, port: int, startup_timeout_seconds: float = 90.0) -> dict:
    """Start the authenticating server (``tasks/gateway.py``) detached on ``port``; returns its record."""
    home = prefect_home(settings)
    api_url = f"http://127.0.0.1:{port}/api"
    log_path = home / "server.log"
    instance_id = f"eve-server-{secrets.token_hex(8)}"
    env = {
        **os.environ,
        "EVE_HOME": str(settings.home),
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": api_url,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    if settings.keys_override:
        env["EVE_KEYS_DIR"] = str(settings.keys_override)
    if settings.auth_override:
        env["EVE_AUTH_DIR"] = str(settings.auth_override)
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING"):
        env.pop(name, None)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tasks.gateway", "--host", "127.0.0.1", "--port", str(port),
             "--instance-id", instance_id],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(REPO_ROOT),
            start_new_session=True,  # outlives this command: a paused promotion waits on it
        )
    deadline = time.monotonic() + startup_timeout_seconds
    # Ours must be the process answering: exited first (the port was taken after it was found
    # free), then the probe must name this instance, not merely answer.
    while process.poll() is None and not _healthy(api_url, instance_id=instance_id):
        if time.monotonic() > deadline:
            process.terminate()
            raise PrefectServerError(
                f"the local Prefect server was not healthy after {startup_timeout_seconds:.0f} s; see {log_path}"
            )
        time.sleep(0.5)
    if process.poll() is not None:
        raise PrefectServerError(
            f"the local Prefect server exited with code {process.returncode} (port {port} taken by another "
            f"process?); see {log_path}"
        )
    state = {"pid": process.pid, "start_ticks": process_start_ticks(process.pid), "instance_id": instance_id,
             "api_url": api_url, "ui_url": api_url.removesuffix("/api"), "log": str(log_path)}
    _state_path(settings).write_text(json.dumps(state))
    return state


def restart_local_server(
    settings: PlatformSettings | None = None, startup_timeout_seconds: float = 90.0, down_seconds: float = 0.0
) -> dict:
    """Stop the local server this home started and start it again on the same port (same database),
    after ``down_seconds`` (a maintenance window; the restart drill uses it). The worker and the runs
    it owns keep going. Returns the new record."""
    settings = settings or PlatformSettings.load()
    path = _state_path(settings)
    if not path.exists():
        raise PrefectServerError("no local Prefect server of this platform home to restart")
    state = json.loads(path.read_text())
    _stop_recorded(state)
    port = int(state["api_url"].rsplit(":", 1)[1].split("/")[0])
    deadline = time.monotonic() + 30
    while not _port_free(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(down_seconds)
    return start_local_server(settings, port, startup_timeout_seconds)


def ui_url(api_url: str) -> str:
    return api_url.rstrip("/").removesuffix("/api")


LOCAL_WORK_POOL = "eve-local"
"""The process work pool of the platform's deployments (``prefect.yaml``)."""
WORKER_STATE_FILE = "worker.json"


def _worker_state_path(settings: PlatformSettings) -> Path:
    return prefect_home(settings) / WORKER_STATE_FILE


def ensure_work_pool(name: str = LOCAL_WORK_POOL) -> None:
    """Create the process work pool ``name`` on the configured server unless it exists."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        except ObjectAlreadyExists:
            pass


def running_local_worker(settings: PlatformSettings) -> dict | None:
    """The recorded worker when that very process still runs, else None."""
    path = _worker_state_path(settings)
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    return state if is_recorded_process(state) else None


def ensure_worker(
    settings: PlatformSettings | None = None, pool: str = LOCAL_WORK_POOL, auth_string: str | None = None
) -> dict:
    """Start (or reuse) a detached process worker for ``pool`` against the configured server.

    The worker runs flow runs in subprocesses with its own environment: the platform home, the API
    URL of this process (``ensure_prefect_server`` first) and the worker account's credentials:
    ``auth_string`` ("name:password" of a ``worker`` account) or, against the local server, the
    ``eve-worker`` service account's.
    """
    settings = settings or PlatformSettings.load()
    ensure_work_pool(pool)
    state = running_local_worker(settings)
    if state is not None and state.get("api_url") == os.environ.get("PREFECT_API_URL"):
        return state
    if state is not None:  # a worker of another server: replace it
        _stop_recorded(state)
    log_path = prefect_home(settings) / "worker.log"
    env = {**os.environ, "EVE_HOME": str(settings.home)}
    local = running_local_server(settings)
    if auth_string:
        env["PREFECT_API_AUTH_STRING"] = auth_string
    elif local is not None and local["api_url"] == os.environ.get("PREFECT_API_URL"):
        env["PREFECT_API_AUTH_STRING"] = AccountStore.default(settings).service_auth_string(WORKER_ACCOUNT)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,  # outlives this command: it owns runs that wait for reviewers
        )
    state = {"pid": process.pid, "start_ticks": process_start_ticks(process.pid), "pool": pool,
             "api_url": os.environ.get("PREFECT_API_URL"), "log": str(log_path)}
    _worker_state_path(settings).write_text(json.dumps(state))
    return state


def _stop_recorded(state: dict, timeout_seconds: float = 20.0) -> bool:
    """Stop the recorded process group if (and only if) its leader is still the recorded process."""
    if not is_recorded_process(state):
        return False
    pid = state["pid"]
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_seconds
    while is_recorded_process(state) and time.monotonic() < deadline:
        time.sleep(0.2)
    if is_recorded_process(state):
        os.killpg(pid, signal.SIGKILL)
    return True


def stop_local_server(settings: PlatformSettings | None = None, timeout_seconds: float = 20.0) -> bool:
    """Stop the worker and the server this platform home started (and only them). True if the
    server was stopped."""
    settings = settings or PlatformSettings.load()
    worker_path = _worker_state_path(settings)
    if worker_path.exists():
        _stop_recorded(json.loads(worker_path.read_text()), timeout_seconds)
        worker_path.unlink(missing_ok=True)
    path = _state_path(settings)
    if not path.exists():
        return False
    # The server runs uvicorn workers in its own session: the whole group goes.
    stopped = _stop_recorded(json.loads(path.read_text()), timeout_seconds)
    path.unlink(missing_ok=True)
    return stopped
