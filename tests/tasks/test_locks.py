"""One job per stage key (tasks.locks, tasks.stages.run_stage): a second run waits for the holder,
named in what it says, and then reuses the result; a holder killed with kill -9 never blocks, and the
next holder learns that it died and resumes its work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tasks.locks import LockTimeout, exclusive, read_holder, work_folder_lock
from tasks.publish import host_name


def test_a_waiter_names_the_holder_and_gives_up_after_its_timeout(tmp_path):
    lock = tmp_path / "stage" / ".lock"
    heard: list[str] = []
    with exclusive(lock, "train stage 1 (key abc)", timeout_seconds=5):
        with pytest.raises(LockTimeout) as timeout:
            with exclusive(lock, "train stage 1 (key abc)", timeout_seconds=0.5, poll_seconds=0.05, on_wait=heard.append):
                pass
    message = str(timeout.value)
    assert f"pid {os.getpid()} on {host_name()}" in message and "(running)" in message and "train stage 1" in message
    assert heard and f"pid {os.getpid()}" in heard[0]
    assert lock.read_text() == ""  # released cleanly: no record left
    with exclusive(lock, "again", timeout_seconds=1) as previous:
        assert previous is None


def test_a_holder_killed_with_sigkill_releases_and_is_reported_dead_to_the_next(tmp_path):
    folder = tmp_path / "stage"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from tasks.locks import work_folder_lock
            with work_folder_lock({str(folder)!r}, "train stage 2 (key dead)", timeout_seconds=10):
                print("held", flush=True)
                time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        start_new_session=True,
    )
    assert holder.stdout.readline().strip() == "held"
    assert read_holder(folder / ".lock").pid == holder.pid
    heard: list[str] = []
    waiter_done = threading.Event()

    def wait_for_it() -> None:
        with work_folder_lock(folder, "train stage 2 (key dead)", timeout_seconds=30, on_log=heard.append,
                              poll_seconds=0.05) as previous:
            heard.append(f"previous={previous.pid if previous else None}")
        waiter_done.set()

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    time.sleep(0.5)
    assert not waiter_done.is_set() and any(f"pid {holder.pid}" in line for line in heard)  # waits, naming it
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait(10)
    waiter.join(20)
    assert waiter_done.is_set()
    assert f"previous={holder.pid}" in heard
    assert any("died before finishing; resuming its partial work" in line and "(dead)" in line for line in heard)


def _planned(eve_home: Path):
    from eve_model.training.config import tiny_stage_config
    from tasks.platform import PlatformSettings
    from tasks.stages import place_stage

    config = tiny_stage_config(1, output_dir="unset", dataset_location="/data/v1", dataset_hash="d" * 64,
                               init_checkpoint="/ckpt/base")
    return place_stage(config, PlatformSettings.load(), parent_weights_sha256="p" * 64, revision="rev1")


def test_two_runs_of_one_stage_key_train_it_once_and_the_second_reuses_it(eve_home, monkeypatch):
    """The job is a stand-in that writes a model after a delay (the real job runs in the e2e test)."""
    import tasks.stages as stages
    from tasks.stages import TrainingParameters, run_stage
    from tasks.submit.spec import JobHandle, JobSpec

    planned = _planned(eve_home)
    jobs: list[float] = []

    class _Done:
        def __init__(self, spec: JobSpec) -> None:
            self.handle = JobHandle(backend="local", job_id=f"fake-{len(jobs)}", spec=spec, log_path=Path("x"),
                                    attempt_job_ids=[f"fake-{len(jobs)}"])

    def fake_job(spec, *args, **kwargs):
        jobs.append(time.monotonic())
        time.sleep(1.0)  # long enough for the second run to arrive while it trains
        final = planned.output_dir / "final"
        final.mkdir()
        (final / "model.safetensors").write_bytes(b"w" * 64)
        (final / "config.json").write_text("{}")
        (final / "final_metrics.json").write_text('{"loss": 1.0}')
        return _Done(spec)

    monkeypatch.setattr(stages, "run_job_to_end", fake_job)
    training = TrainingParameters()
    results: list = [None, None]
    logs: list[list[str]] = [[], []]

    def run(index: int) -> None:
        results[index] = run_stage(planned, training, on_log=logs[index].append, poll_seconds=0.05)

    first = threading.Thread(target=run, args=(0,))
    first.start()
    time.sleep(0.3)
    second = threading.Thread(target=run, args=(1,))
    second.start()
    first.join(30)
    second.join(30)
    assert len(jobs) == 1  # trained once
    assert results[0].skipped is False and results[1].skipped is True
    assert results[0].weights_sha256 == results[1].weights_sha256
    assert any("waiting for pid" in line and "train stage 1" in line for line in logs[1])
