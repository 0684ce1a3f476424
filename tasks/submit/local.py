"""Local backend: torchrun on this machine under the same bash supervisor as the SLURM script.

The supervisor runs in its own session (process group), so ``cancel`` signals exactly the
processes the job started, and a terminal's Ctrl-C reaches the job only through ``send_signal``
(``run_job_to_end(..., relay_signals=True)``, as ``eve train`` does). Status works from any
process: a pid file while it runs, the exit marker once it has ended.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

from eve_model.training.runtime import free_loopback_port
from tasks.submit.base import Backend, prepare_log_dir, read_exit_marker, status_from_marker
from tasks.submit.render import INFRA_DIR, shell_template_environment
from tasks.submit.spec import JobHandle, JobSpec, JobState, JobStatus

_CHILDREN: dict[str, subprocess.Popen] = {}
"""Supervisors started by this process, kept so that they are reaped (no zombies)."""


def render_local_script(spec: JobSpec, job_id: str, rendezvous_port: int) -> str:
    """The supervisor script for one local attempt (infra/slurm/local_stage.sh.j2)."""
    time_limit_seconds = spec.time_limit_minutes * 60 if spec.time_limit_minutes is not None else None
    pre_signal = spec.signal_lead_seconds
    template = shell_template_environment(INFRA_DIR / "slurm").get_template("local_stage.sh.j2")
    return template.render(
        spec=spec,
        workdir=spec.workdir,
        pod_env=False,
        job_id=job_id,
        rendezvous_port=rendezvous_port,
        time_limit_seconds=time_limit_seconds,
        pre_signal_after_seconds=(
            max(time_limit_seconds - pre_signal, 1) if pre_signal and time_limit_seconds is not None else None
        ),
    )


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A zombie has exited; only its parent has not collected it yet.
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def live_group_members(process_group_id: int) -> list[int]:
    """Pids of non-zombie processes in a process group (zombies wait for a reaper, they run nothing)."""
    members = []
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_path.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command name: state, ppid, pgrp, ...
        if int(fields[2]) == process_group_id and fields[0] != "Z":
            members.append(int(stat_path.parent.name))
    return members


class LocalBackend(Backend):
    """Runs jobs as local process groups; ``nodes`` must be 1."""

    name = "local"

    def __init__(self, cancel_grace_seconds: float = 20.0) -> None:
        """``cancel_grace_seconds``: time between SIGTERM and SIGKILL on cancel (checkpoint flush)."""
        self.cancel_grace_seconds = cancel_grace_seconds

    def submit(self, spec: JobSpec) -> JobHandle:
        if spec.nodes != 1:
            raise ValueError(f"the local backend runs one node; {spec.name!r} asks for {spec.nodes}")
        spec = prepare_log_dir(spec)
        log_dir = spec.log_dir
        job_id = f"local-{uuid.uuid4().hex[:12]}"
        script_path = log_dir / f"{job_id}.sh"
        script_path.write_text(render_local_script(spec, job_id, spec.rendezvous_port or free_loopback_port()))
        script_path.chmod(0o700)
        log_path = log_dir / f"{job_id}.log"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                ["bash", str(script_path)],
                cwd=spec.workdir,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _CHILDREN[job_id] = process
        (log_dir / f"{job_id}.pid").write_text(str(process.pid))
        return JobHandle(backend=self.name, job_id=job_id, spec=spec, log_path=log_path, attempt_job_ids=[job_id])

    def _pid(self, handle: JobHandle) -> int | None:
        try:
            return int((handle.spec.log_dir / f"{handle.job_id}.pid").read_text())
        except (OSError, ValueError):
            return None

    def status(self, handle: JobHandle) -> JobStatus:
        child = _CHILDREN.get(handle.job_id)
        if child is not None:
            child.poll()
        marker = read_exit_marker(handle.spec.log_dir, handle.job_id)
        pid = self._pid(handle)
        if marker is None:
            if pid is not None and _pid_running(pid):
                return JobStatus(state=JobState.RUNNING)
            status = JobStatus(state=JobState.FAILED, reason="supervisor ended without an exit marker (killed?)")
        else:
            timed_out = (handle.spec.log_dir / f"timeout-{handle.job_id}").exists()
            status = status_from_marker(marker, scheduler_state=JobState.TIMED_OUT if timed_out else None)
            if timed_out and not status.resumable:
                status.state = JobState.TIMED_OUT
        if (handle.spec.log_dir / f"cancel-{handle.job_id}").exists():
            status = JobStatus(state=JobState.CANCELLED, exit_code=status.exit_code, reason="cancelled")
        return self.with_log_tail(handle, status)

    def send_signal(self, handle: JobHandle, signum: int) -> None:
        """To the supervisor, which forwards it to the ranks (SIGUSR1 as SIGTERM) and records it, so
        the end is resumable (``ExitCode.REQUEUE``) unless a rank failed on its own."""
        pid = self._pid(handle)
        if pid is not None and _pid_running(pid):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:  # it ended in between: nothing left to stop
                pass

    def cancel(self, handle: JobHandle) -> None:
        pid = self._pid(handle)
        (handle.spec.log_dir / f"cancel-{handle.job_id}").touch()
        if pid is None or not _pid_running(pid):
            return
        # The supervisor forwards SIGTERM to the ranks (checkpoint flush); SIGKILL the group after grace.
        self.send_signal(handle, signal.SIGTERM)
        deadline = time.monotonic() + self.cancel_grace_seconds
        child = _CHILDREN.get(handle.job_id)
        while time.monotonic() < deadline:
            if child is not None:
                child.poll()
            if not _pid_running(pid):
                break
            time.sleep(0.1)
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if child is not None:
            child.wait(timeout=5)
        # SIGKILL is asynchronous: return only once nothing of the job runs any more.
        deadline = time.monotonic() + 10
        while live_group_members(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
