"""Run one job to its end on any backend: the platform's one submission path.

``run_job_to_end`` submits, streams the log, waits, lets ``Backend.wait`` resubmit resumable ends
(timeout, preemption after a flushed checkpoint, up to ``JobSpec.max_resubmits``) and maps the end
state. Stage jobs (``tasks.stages``) and ``eve train`` (``cli/train.py``) both go through it.
Callers that are Prefect tasks declare retries with ``retry_only_unreachable_scheduler``: only a
submission the scheduler refused or never received is retried; a job that ran and failed is not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from tasks.submit.backends import get_backend
from tasks.submit.base import SubmitError, relaying_signals
from tasks.submit.spec import JobHandle, JobSpec, JobState, JobStatus


class JobFailed(RuntimeError):
    """The job ended in a state other than COMPLETED; the message carries its state, exit code and log tail."""

    def __init__(self, handle: JobHandle, status: JobStatus) -> None:
        self.handle, self.status = handle, status
        exit_text = f" with exit code {status.exit_code}" if status.exit_code is not None else ""
        super().__init__(
            f"job {handle.spec.name!r} ({handle.backend} {', '.join(handle.attempt_job_ids)}) ended "
            f"{status.state.value}{exit_text}: {status.reason}\n--- log tail ---\n{status.log_tail}"
        )


class SchedulerLost(RuntimeError):
    """The scheduler stopped answering after the job was submitted. Not retried by submitting again
    (the job may still run); the message names the job so an operator can look it up."""


class JobResult(BaseModel):
    """A finished job, for lineage: every attempt's scheduler id and the final status."""

    handle: JobHandle
    status: JobStatus


def run_job_to_end(
    spec: JobSpec,
    backend_name: str = "local",
    backend_options: dict[str, Any] | None = None,
    poll_seconds: float = 5.0,
    timeout_seconds: float | None = None,
    on_log: Callable[[str], None] | None = None,
    relay_signals: bool = False,
    on_event: Callable[[str], None] | None = None,
) -> JobResult:
    """Submit ``spec`` and wait for its end; raises ``JobFailed`` unless it COMPLETED.

    ``relay_signals``: a foreground caller (``eve train``) passes SIGTERM, SIGUSR1 and Ctrl-C on to
    the job while it waits (``tasks.submit.base.relaying_signals``; backends with
    ``send_signal``, e.g. local), so the job flushes a checkpoint and ends resumable.
    ``on_event`` gets one line per scheduler event: the submission (job id, partition, nodes),
    every state change (PENDING, RUNNING, REQUEUED), each end and each resubmission.
    """
    backend = get_backend(backend_name, **(backend_options or {}))
    if relay_signals and not backend.can_signal:
        raise ValueError(f"relay_signals: the {backend.name} backend cannot signal a running job")
    handle = backend.submit(spec)  # a SubmitError here means no job exists: safe to retry
    if on_event is not None:
        on_event(backend.describe_submission(handle))
    relay = relaying_signals(backend, handle) if relay_signals else contextlib.nullcontext()
    try:
        with relay:
            status = backend.wait(handle, poll_seconds=poll_seconds, timeout_seconds=timeout_seconds, on_log=on_log,
                                  on_event=on_event)
    except SubmitError as error:
        raise SchedulerLost(
            f"lost contact with the {handle.backend} scheduler while job {handle.job_id} ({spec.name!r}) ran: {error}"
        ) from error
    if status.state != JobState.COMPLETED:
        raise JobFailed(handle, status)
    return JobResult(handle=handle, status=status)


def retry_only_unreachable_scheduler(task, task_run, state) -> bool:
    """Prefect retry condition: retry a SubmitError (scheduler unreachable/refused), nothing else."""
    return isinstance(state.result(raise_on_failure=False), SubmitError)


__all__ = ["JobFailed", "JobResult", "SchedulerLost", "retry_only_unreachable_scheduler", "run_job_to_end"]
