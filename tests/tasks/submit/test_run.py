"""The one submission path: failures carry state, exit code and log tail; only SubmitError is retried;
a foreground caller's stop signals reach the job."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from prefect.states import Completed, Failed

from eve_model.exit_codes import ExitCode
from tasks.submit.backends import BACKENDS, get_backend
from tasks.submit.base import SubmitError
from tasks.submit.run import JobFailed, retry_only_unreachable_scheduler, run_job_to_end
from tasks.submit.spec import JobSpec, JobState

WORKLOADS = Path(__file__).parent / "workloads"


def _spec(tmp_path: Path, command: list[str], **overrides) -> JobSpec:
    fields = dict(name="run drill", command=command, workdir=tmp_path, log_dir=tmp_path / "logs",
                  pre_timeout_signal_seconds=0)
    fields.update(overrides)
    return JobSpec(**fields)


@pytest.mark.slow
def test_failed_job_raises_with_state_exit_code_and_log_tail(tmp_path):
    spec = _spec(tmp_path, [sys.executable, str(WORKLOADS / "exit_with.py"), "5"])
    with pytest.raises(JobFailed) as failure:
        run_job_to_end(spec, "local", poll_seconds=0.3, timeout_seconds=120)
    assert failure.value.status.state == JobState.FAILED
    assert failure.value.status.exit_code == 5
    assert "fails on purpose with exit code 5" in str(failure.value)


@pytest.mark.slow
@pytest.mark.parametrize(("sent", "state"), [(signal.SIGTERM, JobState.PREEMPTED), (signal.SIGINT, JobState.PREEMPTED),
                                             (signal.SIGUSR1, JobState.TIMED_OUT)])
def test_relayed_stop_signal_checkpoints_the_job_which_ends_resumable(tmp_path, sent, state):
    """What `eve train` relies on: a signal to the waiting process (Ctrl-C included) reaches the
    job, which runs in a session of its own; the ranks flush and the end is REQUEUE, not a kill."""
    out_dir = tmp_path / "out"
    spec = _spec(tmp_path, [sys.executable, str(WORKLOADS / "counter.py"), str(out_dir), "600", "0.2"],
                 tasks_per_node=2, max_resubmits=0)
    streamed: list[str] = []

    def signal_once_running() -> None:
        deadline = time.monotonic() + 120
        while "rank 1 running from step 0" not in "".join(streamed) and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(os.getpid(), sent)

    handler_before = signal.getsignal(sent)
    threading.Thread(target=signal_once_running, daemon=True).start()
    with pytest.raises(JobFailed) as failure:
        run_job_to_end(spec, "local", poll_seconds=0.2, timeout_seconds=180, on_log=streamed.append, relay_signals=True)
    status = failure.value.status
    assert (status.state, status.exit_code, status.resumable) == (state, ExitCode.REQUEUE, True), status.log_tail
    assert all((out_dir / f"checkpoint-rank{rank}.json").exists() for rank in (0, 1))
    assert signal.getsignal(sent) == handler_before  # the caller's own handlers are back


def test_backends_by_name():
    assert {name: cls.name for name, cls in BACKENDS.items()} == {
        "local": "local", "slurm": "slurm", "k8s": "k8s", "kubernetes": "k8s"}
    assert get_backend("slurm", slurm_conf="/x/slurm.conf").slurm_conf == "/x/slurm.conf"
    with pytest.raises(ValueError, match="unknown submission backend 'pbs'"):
        get_backend("pbs")


def test_only_an_unreachable_scheduler_is_retried():
    unreachable = Failed(data=SubmitError("sbatch failed (1): Unable to contact slurm controller"))
    job_failed = Failed(data=RuntimeError("job ended FAILED with exit code 3"))
    assert retry_only_unreachable_scheduler(None, None, unreachable) is True
    assert retry_only_unreachable_scheduler(None, None, job_failed) is False
    assert retry_only_unreachable_scheduler(None, None, Completed(data=1)) is False


def test_wait_streams_whole_lines_and_progress_bar_redraws(tmp_path):
    """A line reaches ``on_log`` once it ends (``\\n``, or a progress bar's ``\\r``); the rest at the end."""
    from tasks.submit.base import Backend
    from tasks.submit.spec import JobHandle, JobStatus

    log = tmp_path / "job.log"
    writes = iter([b"step 1\nstep 2 half", b"-done\n 10%|#  \r 20%|## \r 30", b"%|###\ntail without newline"])

    class Scripted(Backend):
        name = "scripted"

        def submit(self, spec):
            return JobHandle(backend=self.name, job_id="j1", spec=spec, log_path=log, attempt_job_ids=["j1"])

        def status(self, handle):
            chunk = next(writes, None)
            if chunk is None:
                return JobStatus(state=JobState.COMPLETED, exit_code=0)
            with open(log, "ab") as handle_file:
                handle_file.write(chunk)
            return JobStatus(state=JobState.RUNNING)

        def cancel(self, handle):
            raise AssertionError("not cancelled")

    backend = Scripted()
    streamed: list[str] = []
    handle = backend.submit(_spec(tmp_path, ["true"]))
    assert backend.wait(handle, poll_seconds=0, on_log=streamed.append).state == JobState.COMPLETED
    assert streamed == ["step 1\n", "step 2 half-done\n 10%|#  \r 20%|## \r", " 30%|###\n", "tail without newline"]
    with pytest.raises(NotImplementedError, match="scripted backend cannot signal"):
        backend.send_signal(handle, signal.SIGTERM)


def test_relaying_signals_needs_a_backend_that_can_signal(tmp_path):
    assert get_backend("local").can_signal and not get_backend("slurm").can_signal
    with pytest.raises(ValueError, match="the slurm backend cannot signal"):
        run_job_to_end(_spec(tmp_path, ["true"]), "slurm", relay_signals=True)
    assert not (tmp_path / "logs").exists()  # refused before anything was submitted
