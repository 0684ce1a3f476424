"""The local backend: torchrun process groups on this machine, under the shared supervisor."""

from __future__ import annotations

import hashlib
import json
import sys
import os
import time
from pathlib import Path

import pytest

from tasks.submit.backends import get_backend
from tasks.submit.local import LocalBackend
from tasks.submit.spec import JobSpec, JobState

pytestmark = pytest.mark.slow

WORKLOADS = Path(__file__).parent / "workloads"


def _spec(tmp_path: Path, command: list[str], **overrides) -> JobSpec:
    fields = dict(
        name="local drill",
        command=command,
        workdir=tmp_path,
        log_dir=tmp_path / "logs",
        tasks_per_node=1,
        time_limit_minutes=5,
        pre_timeout_signal_seconds=0,
        max_resubmits=0,
    )
    fields.update(overrides)
    return JobSpec(**fields)


def test_two_ranks_complete_and_secret_reaches_ranks_but_no_file(tmp_path, monkeypatch):
    secret = "s3cr3t-value-never-logged"
    monkeypatch.setenv("EVE_TEST_SECRET", secret)
    backend = get_backend("local")
    out_dir = tmp_path / "out"
    spec = _spec(
        tmp_path,
        [sys.executable, str(WORKLOADS / "allreduce.py"), str(out_dir)],
        tasks_per_node=2,
        secret_env_names=["EVE_TEST_SECRET"],
    )
    handle = backend.submit(spec)
    status = backend.wait(handle, poll_seconds=0.3, timeout_seconds=120)

    assert status.state == JobState.COMPLETED, status.log_tail
    records = [json.loads((out_dir / f"rank-{rank}.json").read_text()) for rank in range(2)]
    assert all(r["all_reduce_sum"] == 3.0 and r["world_size"] == 2 for r in records)
    assert all(r["secret_sha256"] == hashlib.sha256(secret.encode()).hexdigest() for r in records)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_failing_rank_gives_failed_with_its_exit_code(tmp_path):
    backend = LocalBackend()
    handle = backend.submit(_spec(tmp_path, [sys.executable, str(WORKLOADS / "exit_with.py"), "3"], tasks_per_node=2))
    status = backend.wait(handle, poll_seconds=0.3, timeout_seconds=120)

    assert (status.state, status.exit_code, status.resumable) == (JobState.FAILED, 3, False)
    assert "fails on purpose with exit code 3" in status.log_tail


def test_cancel_kills_the_whole_process_group(tmp_path):
    backend = LocalBackend(cancel_grace_seconds=10)
    handle = backend.submit(_spec(tmp_path, [sys.executable, str(WORKLOADS / "counter.py"), str(tmp_path / "out"), "600", "0.5"]))
    pid = int((handle.spec.log_dir / f"{handle.job_id}.pid").read_text())
    assert backend.status(handle).state == JobState.RUNNING
    backend.cancel(handle)

    assert backend.status(handle).state == JobState.CANCELLED
    still_running = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except OSError:
            continue
        if int(group) == pid and state != "Z":
            still_running.append(stat.parent.name)
    assert still_running == []


def test_pre_timeout_signal_checkpoints_and_the_stage_resumes(tmp_path):
    """Limit 1 min, signal 40 s early: 24 s of work cannot finish before the signal at 20 s, so
    attempt 1 flushes and exits 75; `wait` resubmits until the work is done."""
    backend = LocalBackend()
    total_steps = 48
    out_dir = tmp_path / "out"
    spec = _spec(
        tmp_path,
        [sys.executable, str(WORKLOADS / "counter.py"), str(out_dir), str(total_steps), "0.5"],
        time_limit_minutes=1,
        pre_timeout_signal_seconds=40,
        checkpoint_save_seconds=2, max_step_seconds=2,  # the counter saves in milliseconds
        max_resubmits=4,
    )
    handle = backend.submit(spec)
    interruptions = []
    status = backend.wait(handle, poll_seconds=0.3, timeout_seconds=240, on_resubmit=lambda h, s: interruptions.append(s))

    assert status.state == JobState.COMPLETED, status.log_tail
    assert interruptions and all(s.state == JobState.TIMED_OUT and s.resumable for s in interruptions)
    assert interruptions[0].exit_code == 75
    assert len(handle.attempt_job_ids) == len(interruptions) + 1
    result = json.loads((out_dir / "result-rank0.json").read_text())
    # An attempt signalled before its rank started counts as a job attempt but not a workload attempt.
    assert 2 <= result["attempts"] <= len(handle.attempt_job_ids) and result["step"] == total_steps


def test_a_stop_request_during_startup_is_resumable_not_a_failure(tmp_path):
    """SIGUSR1 before (or while) the ranks start: nothing failed on its own, so the end is exit 75."""
    import signal

    backend = LocalBackend()
    handle = backend.submit(_spec(tmp_path, [sys.executable, str(WORKLOADS / "counter.py"), str(tmp_path / "out"), "600", "0.5"]))
    pid = int((handle.spec.log_dir / f"{handle.job_id}.pid").read_text())
    time.sleep(0.5)  # the supervisor has installed its traps
    os.kill(pid, signal.SIGUSR1)
    status = backend.wait(handle, poll_seconds=0.3, timeout_seconds=120)

    assert (status.state, status.exit_code, status.resumable) == (JobState.TIMED_OUT, 75, True), status.log_tail
