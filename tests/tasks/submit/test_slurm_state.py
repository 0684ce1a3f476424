"""The SLURM status parser on JSON layouts of SLURM 22.05 (captured here) to 25.05 and scontrol text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.submit.slurm_state import job_state_of, parse_jobs_json, parse_scontrol_show_job
from tasks.submit.spec import JobState

LAYOUTS = Path(__file__).parent / "slurm_json"


@pytest.mark.parametrize(
    ("fixture", "job_id", "slurm_state", "exit_code", "signal", "restarts", "job_state"),
    [
        # 22.05 squeue: state a string, exit_code the raw wait status (19200 = 75 << 8), filters ignored.
        ("squeue-22.05.json", "1", "FAILED", 75, None, 0, JobState.FAILED),
        ("squeue-22.05.json", "3", "COMPLETED", 0, None, 0, JobState.COMPLETED),
        ("squeue-22.05.json", "5", "CANCELLED", 0, None, 1, JobState.CANCELLED),
        ("squeue-22.05.json", "6", "FAILED", 1, None, 1, JobState.FAILED),
        # 23.02: exit_code {"status", "return_code": int, "signal": {"signal_id"}}.
        ("squeue-23.02.json", "101", "TIMEOUT", 0, 15, 0, JobState.TIMED_OUT),
        ("squeue-23.02.json", "102", "OUT_OF_MEMORY", 137, None, 0, JobState.OUT_OF_MEMORY),
        ("squeue-23.02.json", "103", "RUNNING", 0, None, 2, JobState.RUNNING),
        # 24.05: state a list with flags, numbers as {"set", "infinite", "number"}.
        ("squeue-24.05.json", "2001", "PENDING", None, None, 1, JobState.REQUEUED),
        ("squeue-24.05.json", "2002", "PREEMPTED", 0, 15, 0, JobState.PREEMPTED),
        ("squeue-24.05.json", "2003", "COMPLETED", 0, None, 0, JobState.COMPLETED),
        ("squeue-24.05.json", "2004", "RUNNING", None, None, 0, JobState.RUNNING),
        # 25.05: restart_cnt itself a number struct.
        ("squeue-25.05.json", "31337", "FAILED", 75, None, 0, JobState.FAILED),
        ("squeue-25.05.json", "31338", "NODE_FAIL", 1, None, 0, JobState.NODE_FAIL),
        # sacct: state {"current": ...}; one entry per requeue, the last one wins.
        ("sacct-22.05.json", "77", "CANCELLED", 0, None, 1, JobState.CANCELLED),
        ("sacct-24.05.json", "88", "TIMEOUT", 0, 15, 0, JobState.TIMED_OUT),
    ],
)
def test_json_layouts(fixture, job_id, slurm_state, exit_code, signal, restarts, job_state):
    record = parse_jobs_json(json.loads((LAYOUTS / fixture).read_text()), job_id)
    assert record is not None
    assert (record.job_id, record.state, record.exit_code, record.signal, record.restarts) == (
        job_id,
        slurm_state,
        exit_code,
        signal,
        restarts,
    )
    assert job_state_of(record) == job_state


def test_absent_job_is_none():
    assert parse_jobs_json(json.loads((LAYOUTS / "squeue-22.05.json").read_text()), "999") is None
    assert parse_jobs_json({"jobs": []}, "1") is None
    assert parse_scontrol_show_job("slurm_load_jobs error: Invalid job id specified") is None


@pytest.mark.parametrize(
    ("fixture", "job_id", "slurm_state", "exit_code", "signal", "restarts", "job_state"),
    [
        ("scontrol-22.05-job6.txt", "6", "FAILED", 1, None, 1, JobState.FAILED),
        ("scontrol-timeout-signal.txt", "4242", "TIMEOUT", 0, 15, 0, JobState.TIMED_OUT),
    ],
)
def test_scontrol_oneliner(fixture, job_id, slurm_state, exit_code, signal, restarts, job_state):
    record = parse_scontrol_show_job((LAYOUTS / fixture).read_text())
    assert (record.job_id, record.state, record.exit_code, record.signal, record.restarts) == (
        job_id,
        slurm_state,
        exit_code,
        signal,
        restarts,
    )
    assert job_state_of(record) == job_state


def test_raw_wait_status_of_a_signalled_job():
    record = parse_jobs_json({"jobs": [{"job_id": 5, "job_state": "CANCELLED", "exit_code": 9}]}, "5")
    assert (record.exit_code, record.signal) == (None, 9)


def test_sacct_parsable_text_gives_the_real_exit_code_and_state():
    """Slurm 22.05's ``sacct --json`` reports exit 3 as return_code 0; the parsable text does not."""
    from tasks.submit.slurm_state import parse_sacct_parsable

    text = "9|FAILED|3:0|None\n12|CANCELLED by 0|0:15|None\n13|TIMEOUT|0:0|TimeLimit\n"
    failed = parse_sacct_parsable(text, "9")
    assert (failed.state, failed.exit_code, failed.signal, job_state_of(failed)) == ("FAILED", 3, None, JobState.FAILED)
    cancelled = parse_sacct_parsable(text, "12")
    assert (cancelled.state, cancelled.signal, job_state_of(cancelled)) == ("CANCELLED", 15, JobState.CANCELLED)
    assert job_state_of(parse_sacct_parsable(text, "13")) == JobState.TIMED_OUT
    assert parse_sacct_parsable(text, "99") is None
