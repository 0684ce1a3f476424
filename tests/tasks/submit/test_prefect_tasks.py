"""The Prefect wrapper: failures carry state, exit code and log tail; only SubmitError is retried."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from prefect.states import Completed, Failed

from tasks.submit.base import SubmitError
from tasks.submit.prefect_tasks import JobFailed, retry_only_unreachable_scheduler, run_job_to_end
from tasks.submit.spec import JobSpec, JobState

WORKLOADS = Path(__file__).parent / "workloads"


@pytest.mark.slow
def test_failed_job_raises_with_state_exit_code_and_log_tail(tmp_path):
    spec = JobSpec(
        name="fails",
        command=[sys.executable, str(WORKLOADS / "exit_with.py"), "5"],
        workdir=tmp_path,
        log_dir=tmp_path / "logs",
        pre_timeout_signal_seconds=0,
    )
    with pytest.raises(JobFailed) as failure:
        run_job_to_end(spec, "local", poll_seconds=0.3, timeout_seconds=120)
    assert failure.value.status.state == JobState.FAILED
    assert failure.value.status.exit_code == 5
    assert "fails on purpose with exit code 5" in str(failure.value)


def test_only_an_unreachable_scheduler_is_retried():
    unreachable = Failed(data=SubmitError("sbatch failed (1): Unable to contact slurm controller"))
    job_failed = Failed(data=RuntimeError("job ended FAILED with exit code 3"))
    assert retry_only_unreachable_scheduler(None, None, unreachable) is True
    assert retry_only_unreachable_scheduler(None, None, job_failed) is False
    assert retry_only_unreachable_scheduler(None, None, Completed(data=1)) is False
