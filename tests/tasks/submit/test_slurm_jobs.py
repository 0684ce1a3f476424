"""Drills on a real SLURM cluster (tests/fixtures/slurm_cluster.py): the SLURM backend end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.submit.base import SubmitError
from tasks.submit.slurm import SlurmBackend
from tasks.submit.spec import JobSpec, JobState

pytestmark = pytest.mark.slow

WORKLOADS = Path(__file__).parent / "workloads"


@pytest.fixture
def backend(slurm_cluster) -> SlurmBackend:
    return SlurmBackend(slurm_conf=slurm_cluster.slurm_conf)


def _spec(tmp_path: Path, command: list[str], **overrides) -> JobSpec:
    fields = dict(
        name="drill",
        command=command,
        workdir=tmp_path,
        log_dir=tmp_path / "logs",
        nodes=1,
        tasks_per_node=1,
        time_limit_minutes=2,
        pre_timeout_signal_seconds=0,
        max_resubmits=0,
    )
    fields.update(overrides)
    return JobSpec(**fields)


def _wait_until_running(backend: SlurmBackend, handle, timeout_seconds: float = 60) -> None:
    deadline = time.monotonic() + timeout_seconds
    while backend.status(handle).state != JobState.RUNNING:
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.3)


def _wait_for_log(backend: SlurmBackend, handle, needle: str, timeout_seconds: float = 60) -> None:
    deadline = time.monotonic() + timeout_seconds
    while needle not in backend.logs(handle):
        assert time.monotonic() < deadline, f"{needle!r} never appeared in the job log"
        time.sleep(0.3)


def _uninterrupted_counter(tmp_path: Path, total_steps: int) -> dict:
    """The reference: the same workload run straight through, without any scheduler."""
    out_dir = tmp_path / "reference"
    subprocess.run([sys.executable, str(WORKLOADS / "counter.py"), str(out_dir), str(total_steps), "0"], check=True)
    return json.loads((out_dir / "result-rank0.json").read_text())


def test_two_task_job_completes_and_hostile_names_stay_inert(backend, tmp_path):
    """2 ranks through sbatch all-reduce correctly; a `$(...)` name, env value and paths run nothing."""
    pwned = tmp_path / "pwned"
    hostile = f"run $(touch {pwned}) `touch {pwned}` ; touch {pwned} 'quote\" {{x}}"
    workdir = tmp_path / "work dir $(touch x)"
    workdir.mkdir()
    out_dir = tmp_path / "out ; touch pwned"
    spec = _spec(
        tmp_path,
        [sys.executable, str(WORKLOADS / "allreduce.py"), str(out_dir)],
        name=hostile,
        tasks_per_node=2,
        workdir=workdir,
        log_dir=tmp_path / "logs $(touch y)",
        env={"EVE_HOSTILE": hostile},
    )
    handle = backend.submit(spec)
    streamed: list[str] = []
    status = backend.wait(handle, poll_seconds=0.5, timeout_seconds=180, on_log=streamed.append)

    assert status.state == JobState.COMPLETED, status
    assert status.exit_code == 0
    records = [json.loads((out_dir / f"rank-{rank}.json").read_text()) for rank in range(2)]
    assert {r["rank"] for r in records} == {0, 1}
    assert all(r["all_reduce_sum"] == 1 + 2 for r in records)
    assert all(r["job_name"] == hostile for r in records)
    assert "all-reduce sum" in "".join(streamed)
    assert not pwned.exists() and not (workdir / "x").exists() and not (tmp_path / "y").exists()
    assert not list(tmp_path.rglob("pwned"))


def test_failing_job_reports_exit_code_and_log_tail(backend, tmp_path):
    handle = backend.submit(_spec(tmp_path, [sys.executable, str(WORKLOADS / "exit_with.py"), "3"], tasks_per_node=2))
    status = backend.wait(handle, poll_seconds=0.5, timeout_seconds=120)

    assert status.state == JobState.FAILED
    assert status.exit_code == 3
    assert not status.resumable
    assert "fails on purpose with exit code 3" in status.log_tail


def test_scancel_reports_cancelled(backend, tmp_path):
    handle = backend.submit(_spec(tmp_path, [sys.executable, str(WORKLOADS / "counter.py"), str(tmp_path / "out"), "600", "0.5"]))
    _wait_for_log(backend, handle, "rank 0 running from step 0")
    backend.cancel(handle)
    status = backend.wait(handle, poll_seconds=0.5, timeout_seconds=60)

    assert status.state == JobState.CANCELLED
    assert not (tmp_path / "out" / "result-rank0.json").exists()


def test_time_limit_flushes_checkpoint_and_stage_resumes(backend, tmp_path):
    """--time=1 with the pre-timeout signal 58 s early: slurmctld signals within its ~30 s check
    period, the job checkpoints and exits 75, and `wait` resubmits until the work is done."""
    total_steps = 68  # 34 s of work: longer than the signal can take to arrive
    out_dir = tmp_path / "out"
    spec = _spec(
        tmp_path,
        [sys.executable, str(WORKLOADS / "counter.py"), str(out_dir), str(total_steps), "0.5"],
        time_limit_minutes=1,
        pre_timeout_signal_seconds=58,
        checkpoint_save_seconds=2, max_step_seconds=2,  # the counter saves in milliseconds
        max_resubmits=6,
    )
    handle = backend.submit(spec)
    interruptions = []
    status = backend.wait(
        handle, poll_seconds=0.5, timeout_seconds=240, on_resubmit=lambda h, s: interruptions.append(s)
    )

    assert status.state == JobState.COMPLETED, status
    assert interruptions and all(s.state == JobState.TIMED_OUT and s.resumable for s in interruptions)
    assert interruptions[0].exit_code == 75
    assert len(handle.attempt_job_ids) == len(interruptions) + 1
    result = json.loads((out_dir / "result-rank0.json").read_text())
    # An attempt signalled before its rank started counts as a job attempt but not a workload attempt.
    assert 2 <= result["attempts"] <= len(handle.attempt_job_ids)
    assert result == {**_uninterrupted_counter(tmp_path, total_steps), "attempts": result["attempts"]}


def test_scontrol_requeue_resumes_with_the_uninterrupted_result(backend, tmp_path):
    """The cluster's cred_expire=10 lets a requeued job start again after ~10 s (SLURM's default is 120 s)."""
    total_steps = 24
    out_dir = tmp_path / "out"
    spec = _spec(tmp_path, [sys.executable, str(WORKLOADS / "counter.py"), str(out_dir), str(total_steps), "0.4"], tasks_per_node=2)
    handle = backend.submit(spec)
    _wait_for_log(backend, handle, "rank 1 running from step 0")
    time.sleep(2)
    backend.requeue(handle)
    status = backend.wait(handle, poll_seconds=0.5, timeout_seconds=120)

    assert status.state == JobState.COMPLETED, status
    assert status.restarts == 1
    assert handle.attempt_job_ids == [handle.job_id]  # same job, requeued by SLURM, not resubmitted
    log = backend.logs(handle)
    assert "checkpoint at step" in log and "resumed at step" in log
    reference = _uninterrupted_counter(tmp_path, total_steps)
    for rank in range(2):
        result = json.loads((out_dir / f"result-rank{rank}.json").read_text())
        assert result["attempts"] == 2
        assert result["value"] == reference["value"] and result["step"] == reference["step"]


def test_two_node_job_agrees_on_rendezvous(backend, slurm_cluster, tmp_path):
    out_dir = tmp_path / "out"
    spec = _spec(tmp_path, [sys.executable, str(WORKLOADS / "allreduce.py"), str(out_dir)], nodes=2, tasks_per_node=1)
    handle = backend.submit(spec)
    status = backend.wait(handle, poll_seconds=0.5, timeout_seconds=180)

    assert status.state == JobState.COMPLETED, status
    records = [json.loads(p.read_text()) for p in sorted(out_dir.glob("rank-*.json"))]
    assert sorted(r["rank"] for r in records) == [0, 1]
    assert {r["slurm_node"] for r in records} == set(slurm_cluster.node_names)
    assert {r["group_rank"] for r in records} == {0, 1}
    assert len({(r["master_addr"], r["master_port"]) for r in records}) == 1
    assert all(r["preflight_world_size"] == 2 for r in records)
    world_size = 2
    assert all(r["all_reduce_sum"] == world_size * (world_size + 1) / 2 for r in records)


def test_unreachable_controller_is_retried_then_fails_clearly(slurm_cluster, tmp_path, caplog):
    dead_conf = tmp_path / "slurm.conf"
    text = slurm_cluster.slurm_conf.read_text()
    dead_conf.write_text("\n".join("SlurmctldPort=1" if line.startswith("SlurmctldPort=") else line for line in text.splitlines()))
    backend = SlurmBackend(slurm_conf=dead_conf, unreachable_retries=1, retry_backoff_seconds=0.1)
    with caplog.at_level("WARNING", logger="tasks.submit.slurm"):
        with pytest.raises(SubmitError, match="Unable to contact slurm controller"):
            backend.submit(_spec(tmp_path, [sys.executable, "-c", "pass"]))
    assert sum("controller unreachable" in r.getMessage() for r in caplog.records) == 1
