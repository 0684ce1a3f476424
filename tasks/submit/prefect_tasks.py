"""Thin Prefect task over the submission backends: run one job to its end, logs into the run's log.

Retries on the decorator cover only an unreachable scheduler (``SubmitError``): a job that ran
and failed is not resubmitted by Prefect; resumable ends (timeout, preemption after a flushed
checkpoint) are already resubmitted by ``Backend.wait`` up to ``JobSpec.max_resubmits``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import task
from prefect.logging import get_run_logger
from pydantic import BaseModel

from tasks.submit.base import SubmitError, get_backend
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
) -> JobResult:
    """Submit ``spec`` and wait for its end; raises ``JobFailed`` unless it COMPLETED."""
    backend = get_backend(backend_name, **(backend_options or {}))
    handle = backend.submit(spec)
    status = backend.wait(handle, poll_seconds=poll_seconds, timeout_seconds=timeout_seconds, on_log=on_log)
    if status.state != JobState.COMPLETED:
        raise JobFailed(handle, status)
    return JobResult(handle=handle, status=status)


def retry_only_unreachable_scheduler(task, task_run, state) -> bool:
    """Prefect retry condition: retry a SubmitError (scheduler unreachable/refused), nothing else."""
    return isinstance(state.result(raise_on_failure=False), SubmitError)


@task(
    name="run-training-job",
    task_run_name="job-{spec.name}",
    retries=3,
    retry_delay_seconds=[10, 60, 300],
    retry_condition_fn=retry_only_unreachable_scheduler,
)
def run_job(
    spec: JobSpec,
    backend_name: str = "local",
    backend_options: dict[str, Any] | None = None,
    poll_seconds: float = 5.0,
    timeout_seconds: float | None = None,
) -> JobResult:
    """Prefect task around ``run_job_to_end``; the job's log lines stream into the task run's log."""
    logger = get_run_logger()
    return run_job_to_end(
        spec,
        backend_name,
        backend_options,
        poll_seconds=poll_seconds,
        timeout_seconds=timeout_seconds,
        on_log=lambda text: [logger.info(line) for line in text.splitlines() if line.strip()],
    )
