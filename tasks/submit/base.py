"""The one interface every submission backend implements, and the shared wait/resubmit loop.

This module imports no backend: ``tasks.submit.backends.get_backend`` picks one by name.
"""

from __future__ import annotations

import abc
import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from eve_model.exit_codes import ExitCode
from tasks.submit.spec import JobAttempt, JobHandle, JobSpec, JobState, JobStatus

LOG_TAIL_LINES = 120

RELAYED_SIGNALS = {signal.SIGTERM: signal.SIGTERM, signal.SIGUSR1: signal.SIGUSR1, signal.SIGINT: signal.SIGTERM}
"""Signals a foreground caller passes on to its job (``relaying_signals``), and what the job gets:
SIGTERM and SIGUSR1 as they are, Ctrl-C as SIGTERM. Each one makes the job flush a checkpoint and
end with ``ExitCode.REQUEUE``."""


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
    """Interpret an exit marker; a flushed checkpoint (``ExitCode.REQUEUE``) makes the end resumable."""
    exit_code = int(marker["exit_code"])
    signal_name = marker.get("signal") or ""
    if exit_code == ExitCode.COMPLETED:
        return JobStatus(state=JobState.COMPLETED, exit_code=exit_code, reason="completed")
    if exit_code == ExitCode.REQUEUE:
        if signal_name == "USR1" or scheduler_state == JobState.TIMED_OUT:
            return JobStatus(
                state=JobState.TIMED_OUT,
                exit_code=exit_code,
                reason="pre-timeout signal USR1: checkpoint flushed, resumable",
                resumable=True,
            )
        return JobStatus(
            state=JobState.PREEMPTED,
            exit_code=exit_code,
            reason=f"stopped by SIG{signal_name or 'TERM'}: checkpoint flushed, resumable",
            resumable=True,
        )
    ranks = marker.get("rank_exit_codes")
    return JobStatus(
        state=scheduler_state if scheduler_state in (JobState.OUT_OF_MEMORY, JobState.NODE_FAIL) else JobState.FAILED,
        exit_code=exit_code,
        reason=f"workload exited {ExitCode.describe(exit_code)}" + (f" (rank exit codes {ranks})" if ranks else ""),
    )


def prepare_log_dir(spec: JobSpec) -> JobSpec:
    """``spec`` with ``log_dir`` made absolute and created (scripts, logs and markers go there)."""
    log_dir = Path(spec.log_dir).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    return spec.model_copy(update={"log_dir": log_dir})


def _complete_lines(chunk: bytes) -> bytes:
    """The part of ``chunk`` up to its last line end: ``\\n``, or the ``\\r`` of a progress bar
    redrawing its line. A multi-byte character is never split across two chunks."""
    return chunk[: max(chunk.rfind(b"\n"), chunk.rfind(b"\r")) + 1]


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

    def send_signal(self, handle: JobHandle, signum: int) -> None:
        """Deliver ``signum`` to the running job as a scheduler would (SIGTERM, SIGUSR1: the ranks
        flush a checkpoint and the job ends with ``ExitCode.REQUEUE``). Not every backend can
        (``can_signal``)."""
        raise NotImplementedError(f"the {self.name} backend cannot signal a running job")

    @property
    def can_signal(self) -> bool:
        """Whether ``send_signal`` is implemented (the local backend; SLURM and Kubernetes signal
        their jobs themselves on pre-emption and time limits)."""
        return type(self).send_signal is not Backend.send_signal

    def logs(self, handle: JobHandle, since_offset: int = 0) -> str:
        """Log text of the current attempt from byte ``since_offset`` (for streaming into Prefect)."""
        return self.read_log_bytes(handle, since_offset).decode("utf-8", errors="replace")

    def with_log_tail(self, handle: JobHandle, status: JobStatus) -> JobStatus:
        """``status`` with the last lines of the job log, when the job ended other than COMPLETED."""
        if status.state.is_final and status.state != JobState.COMPLETED:
            status.log_tail = tail_lines(self.logs(handle))
        return status

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

    def describe_submission(self, handle: JobHandle) -> str:
        """One line for the flow log: which job, where, how large."""
        spec = handle.spec
        size = f"{spec.nodes} node(s) x {spec.gpus_per_node} GPU(s)" if spec.gpus_per_node else f"{spec.nodes} node(s) x {spec.ranks_per_node} rank(s)"
        return f"submitted {spec.name!r} as {self.name} job {handle.job_id} ({size})"

    def wait(
        self,
        handle: JobHandle,
        poll_seconds: float = 5.0,
        timeout_seconds: float | None = None,
        on_log: Callable[[str], None] | None = None,
        on_resubmit: Callable[[JobHandle, JobStatus], None] | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> JobStatus:
        """Poll until the job ends, streaming new log text to ``on_log`` (whole lines; a progress
        bar's ``\\r`` redraws count as line ends) and every scheduler state change (PENDING,
        RUNNING, a requeue, the end, a resubmission) to ``on_event`` as one line.

        A resumable end (timeout or preemption after a flushed checkpoint) is resubmitted up to
        ``spec.max_resubmits`` times instead of failing the stage; ``handle`` is updated in place
        (``job_id``, ``attempt_job_ids``, ``attempts``) so the caller can record every attempt,
        requeues under the same job id included.
        """
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        log_offset = 0
        resubmits = 0
        seen: tuple[str, JobState, int, str] | None = None
        while True:
            status = self.status(handle)
            if seen is not None and seen[0] == handle.job_id and status.restarts > seen[2]:
                handle.attempts.append(JobAttempt(job_id=handle.job_id, restart=seen[2], state=JobState.REQUEUED,
                                                  reason="requeued by the scheduler (preemption, node failure or scontrol requeue)"))
                if on_event is not None:
                    on_event(f"{self.name} job {handle.job_id}: REQUEUED (restart {status.restarts}); it resumes from its last checkpoint")
            current = (handle.job_id, status.state, status.restarts, status.reason)
            if current != seen and on_event is not None and not status.state.is_final:
                reason = f" ({status.reason})" if status.reason and status.reason != "None" else ""
                on_event(f"{self.name} job {handle.job_id}: {status.state.value}{reason}")
            seen = current
            if on_log is not None:
                chunk = self.read_log_bytes(handle, log_offset)
                if chunk:
                    complete = chunk if status.state.is_final else _complete_lines(chunk)
                    if complete:
                        log_offset += len(complete)
                        on_log(complete.decode("utf-8", errors="replace"))
            if status.state.is_final:
                handle.attempts.append(JobAttempt(job_id=handle.job_id, restart=status.restarts, state=status.state,
                                                  exit_code=status.exit_code, reason=status.reason))
                if on_event is not None:
                    on_event(f"{self.name} job {handle.job_id}: {status.state.value}, exit {ExitCode.describe(status.exit_code)}: {status.reason}")
                if status.resumable and resubmits < handle.spec.max_resubmits:
                    resubmits += 1
                    if on_resubmit is not None:
                        on_resubmit(handle, status)
                    fresh = self.resubmit(handle)
                    handle.job_id, handle.log_path = fresh.job_id, fresh.log_path
                    handle.attempt_job_ids = fresh.attempt_job_ids
                    if on_event is not None:
                        on_event(f"resubmitted as {self.name} job {handle.job_id} (resubmission {resubmits} of at most "
                                 f"{handle.spec.max_resubmits}); it resumes from the flushed checkpoint")
                    log_offset = 0
                    seen = None
                    continue
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise JobWaitTimeout(
                    f"job {handle.job_id} ({handle.spec.name!r}) still {status.state.value} "
                    f"after {timeout_seconds} s; it keeps running"
                )
            time.sleep(poll_seconds)


@contextlib.contextmanager
def relaying_signals(backend: Backend, handle: JobHandle) -> Iterator[None]:
    """While the caller waits for ``handle`` in the foreground, pass the stop signals it receives
    (``RELAYED_SIGNALS``) on to the job with ``backend.send_signal``.

    For a job that runs outside the caller's process group (the local backend starts each job in a
    session of its own), so that a terminal's Ctrl-C or a ``kill`` of the caller stops the job
    cleanly instead of orphaning it. Python signal handlers live on the main thread only; elsewhere
    this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def relay(signum: int, _frame) -> None:
        backend.send_signal(handle, RELAYED_SIGNALS[signum])

    previous = {signum: signal.signal(signum, relay) for signum in RELAYED_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
