"""The one interface every submission backend implements, and the shared wait/resubmit loop."""

from __future__ import annotations

import abc
import json
import time
from collections.abc import Callable
from pathlib import Path

from tasks.submit.spec import EXIT_REQUEUE_ME, JobHandle, JobSpec, JobState, JobStatus

LOG_TAIL_LINES = 120


class SubmitError(RuntimeError):
    """The scheduler refused the job or could not be reached after retries."""


class JobWaitTimeout(TimeoutError):
    """``wait`` ran out of time while the job was still going; the job keeps running."""


def tail_lines(text: str, line_count: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-line_count:])


def read_exit_marker(log_dir: Path, job_id: str) -> dict | None:
    """The supervisor's ``exit-<job>.json``: the workload's real exit code and the signal it got."""
    path = Path(log_dir) / f"exit-{job_id}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def status_from_marker(marker: dict, scheduler_state: JobState | None = None) -> JobStatus:
    """Interpret an exit marker; a flushed checkpoint (exit 75) makes the end resumable."""
    exit_code = int(marker["exit_code"])
    signal = marker.get("signal") or ""
    if exit_code == 0:
        return JobStatus(state=JobState.COMPLETED, exit_code=0, reason="completed")
    if exit_code == EXIT_REQUEUE_ME:
        if signal == "USR1" or scheduler_state == JobState.TIMED_OUT:
            return JobStatus(
                state=JobState.TIMED_OUT,
                exit_code=exit_code,
                reason="pre-timeout signal USR1: checkpoint flushed, resumable",
                resumable=True,
            )
        return JobStatus(
            state=JobState.PREEMPTED,
            exit_code=exit_code,
            reason=f"stopped by SIG{signal or 'TERM'}: checkpoint flushed, resumable",
            resumable=True,
        )
    ranks = marker.get("rank_exit_codes")
    return JobStatus(
        state=scheduler_state if scheduler_state in (JobState.OUT_OF_MEMORY, JobState.NODE_FAIL) else JobState.FAILED,
        exit_code=exit_code,
        reason=f"workload exited {exit_code}" + (f" (rank exit codes {ranks})" if ranks else ""),
    )


class Backend(abc.ABC):
    """Submit, observe, stream and cancel training jobs on one kind of scheduler."""

    name: str = "base"

    @abc.abstractmethod
    def submit(self, spec: JobSpec) -> JobHandle:
        """Start the job; returns at once with a handle."""

    @abc.abstractmethod
    def status(self, handle: JobHandle) -> JobStatus:
        """One observation of the current attempt (log tail filled for failed end states)."""

    def read_log_bytes(self, handle: JobHandle, since_offset: int = 0) -> bytes:
        """Raw log bytes of the current attempt from ``since_offset``: by default the job's log file
        (local and SLURM write one; Kubernetes overrides this to read pod logs)."""
        try:
            with open(handle.log_path, "rb") as log_file:
                log_file.seek(since_offset)
                return log_file.read()
        except FileNotFoundError:
            return b""

    @abc.abstractmethod
    def cancel(self, handle: JobHandle) -> None:
        """Stop the job; its status becomes CANCELLED."""

    def logs(self, handle: JobHandle, since_offset: int = 0) -> str:
        """Log text of the current attempt from byte ``since_offset`` (for streaming into Prefect)."""
        return self.read_log_bytes(handle, since_offset).decode("utf-8", errors="replace")

    def resubmit(self, handle: JobHandle) -> JobHandle:
        """Start the next attempt of the same spec (it resumes from the checkpoint it flushed)."""
        fresh = self.submit(handle.spec)
        return handle.model_copy(
            update={
                "job_id": fresh.job_id,
                "log_path": fresh.log_path,
                "attempt_job_ids": [*handle.attempt_job_ids, fresh.job_id],
            }
        )

    def wait(
        self,
        handle: JobHandle,
        poll_seconds: float = 5.0,
        timeout_seconds: float | None = None,
        on_log: Callable[[str], None] | None = None,
        on_resubmit: Callable[[JobHandle, JobStatus], None] | None = None,
    ) -> JobStatus:
        """Poll until the job ends, streaming new log text to ``on_log``.

        A resumable end (timeout or preemption after a flushed checkpoint) is resubmitted up to
        ``spec.max_resubmits`` times instead of failing the stage; ``handle`` is updated in place
        (``job_id``, ``attempt_job_ids``) so the caller can record every attempt.
        """
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        log_offset = 0
        resubmits = 0
        while True:
            status = self.status(handle)
            if on_log is not None:
                chunk = self.read_log_bytes(handle, log_offset)
                if chunk:
                    # Only whole lines: a multi-byte character is never split across two chunks.
                    complete = chunk if status.state.is_final else chunk[: chunk.rfind(b"\n") + 1]
                    if complete:
                        log_offset += len(complete)
                        on_log(complete.decode("utf-8", errors="replace"))
            if status.state.is_final:
                if status.resumable and resubmits < handle.spec.max_resubmits:
                    resubmits += 1
                    if on_resubmit is not None:
                        on_resubmit(handle, status)
                    fresh = self.resubmit(handle)
                    handle.job_id, handle.log_path = fresh.job_id, fresh.log_path
                    handle.attempt_job_ids = fresh.attempt_job_ids
                    log_offset = 0
                    continue
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise JobWaitTimeout(
                    f"job {handle.job_id} ({handle.spec.name!r}) still {status.state.value} "
                    f"after {timeout_seconds} s; it keeps running"
                )
            time.sleep(poll_seconds)


def get_backend(name: str, **options) -> Backend:
    """``get_backend("local" | "slurm" | "k8s", **options)``; options go to the backend's constructor."""
    if name == "local":
        from tasks.submit.local import LocalBackend

        return LocalBackend(**options)
    if name == "slurm":
        from tasks.submit.slurm import SlurmBackend

        return SlurmBackend(**options)
    if name in ("k8s", "kubernetes"):
        from tasks.submit.k8s import KubernetesBackend

        return KubernetesBackend(**options)
    raise ValueError(f"unknown submission backend {name!r}; choose local, slurm or k8s")
