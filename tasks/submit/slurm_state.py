"""Reading SLURM's view of a job from squeue/sacct JSON (SLURM 22.05 to 25.x) and scontrol text.

The JSON layouts moved between releases; each field is read through a small normaliser instead
of assuming one layout:

- state: ``"COMPLETED"`` (<=23.02), ``["COMPLETED"]`` or ``["PENDING", "REQUEUED"]`` (>=23.11),
  ``{"current": ..., "reason": ...}`` (sacct);
- exit code: the raw wait status as an int (squeue 22.05: ``19200`` = exit 75), ``"75:0"``
  (scontrol), ``{"status": ..., "return_code": 75}`` (23.02) or
  ``{"return_code": {"set": true, "infinite": false, "number": 75}, "signal": {...}}`` (>=23.11);
- numbers in general: a plain int or ``{"set", "infinite", "number"}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tasks.submit.spec import JobState


@dataclass
class SlurmJobRecord:
    """SLURM's own words about one job, before mapping to ``JobState``."""

    job_id: str
    state: str
    """Base state, e.g. RUNNING, COMPLETED, TIMEOUT."""
    state_flags: list[str] = field(default_factory=list)
    """Extra state words of list layouts, e.g. REQUEUED, COMPLETING."""
    reason: str = ""
    exit_code: int | None = None
    signal: int | None = None
    restarts: int = 0


def _number(value: object) -> int | None:
    """A plain int, a numeric string, or the >=23.11 ``{"set", "infinite", "number"}`` struct."""
    if isinstance(value, dict):
        if not value.get("set", True) or value.get("infinite", False):
            return None
        value = value.get("number")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _state_words(value: object) -> list[str]:
    if isinstance(value, dict):
        value = value.get("current", value.get("state"))
    if isinstance(value, str):
        return [word for word in re.split(r"[,\s]+", value.upper()) if word]
    if isinstance(value, list):
        return [str(word).upper() for word in value if word]
    return []


def _exit_code_and_signal(value: object) -> tuple[int | None, int | None]:
    if isinstance(value, bool) or value is None:
        return None, None
    if isinstance(value, int):
        # squeue <=22.05 reports the raw wait(2) status.
        if value & 0x7F:
            return None, value & 0x7F
        return (value >> 8) & 0xFF, None
    if isinstance(value, str):
        match = re.match(r"^\s*(\d+)(?::(\d+))?\s*$", value)
        if not match:
            return None, None
        signal = int(match.group(2)) if match.group(2) else None
        return int(match.group(1)), signal or None
    if isinstance(value, dict):
        code = _number(value.get("return_code"))
        signal_value = value.get("signal")
        signal = None
        if isinstance(signal_value, dict):
            signal = _number(signal_value.get("id", signal_value.get("signal_id")))
        else:
            signal = _number(signal_value)
        return code, signal or None
    return None, None


def _record_from_json_job(job: dict) -> SlurmJobRecord:
    words = _state_words(job.get("job_state", job.get("state")))
    state_value = job.get("state")
    reason = job.get("state_reason")
    if reason is None and isinstance(state_value, dict):
        reason = state_value.get("reason")
    exit_code, signal = _exit_code_and_signal(job.get("exit_code"))
    restarts = _number(job.get("restart_cnt", job.get("restarts", 0))) or 0
    return SlurmJobRecord(
        job_id=str(_number(job.get("job_id")) if _number(job.get("job_id")) is not None else job.get("job_id")),
        state=words[0] if words else "UNKNOWN",
        state_flags=words[1:],
        reason=str(reason or ""),
        exit_code=exit_code,
        signal=signal,
        restarts=restarts,
    )


def parse_jobs_json(document: dict, job_id: str) -> SlurmJobRecord | None:
    """The record of ``job_id`` in ``squeue --json`` or ``sacct --json`` output (None if absent).

    squeue 22.05 ignores job filters in JSON mode, and sacct lists one entry per requeue, so the
    last matching entry wins.
    """
    found = None
    for job in document.get("jobs") or []:
        if str(_number(job.get("job_id"))) == str(job_id):
            found = _record_from_json_job(job)
    return found


def parse_scontrol_show_job(text: str) -> SlurmJobRecord | None:
    """``scontrol show job -o ID`` (key=value words, stable across releases)."""
    fields: dict[str, str] = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if sep and key not in fields:
            fields[key] = value
    if "JobId" not in fields or "JobState" not in fields:
        return None
    exit_code, signal = _exit_code_and_signal(fields.get("ExitCode"))
    words = _state_words(fields["JobState"])
    return SlurmJobRecord(
        job_id=fields["JobId"],
        state=words[0] if words else "UNKNOWN",
        state_flags=words[1:],
        reason=fields.get("Reason", ""),
        exit_code=exit_code,
        signal=signal,
        restarts=_number(fields.get("Restarts", "0")) or 0,
    )


SACCT_FORMAT = "JobIDRaw,State,ExitCode,Reason"
"""Columns of ``sacct -X -P -n -o ...`` that ``parse_sacct_parsable`` reads."""


def parse_sacct_parsable(text: str, job_id: str) -> SlurmJobRecord | None:
    """The record of ``job_id`` in ``sacct -X -P -n -o SACCT_FORMAT`` output (None if absent).

    The parsable text, not ``sacct --json``: Slurm 22.05's JSON reports every exit code as
    ``{"status": "SUCCESS", "return_code": 0}`` (a job whose script exited 3 included), while the
    text columns are stable across releases. ``State`` may carry a suffix (``CANCELLED by 0``).
    """
    found = None
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) < 3 or fields[0].strip() != str(job_id):
            continue
        exit_code, signal = _exit_code_and_signal(fields[2])
        words = _state_words(fields[1].split(" by ")[0])
        found = SlurmJobRecord(
            job_id=fields[0].strip(),
            state=words[0] if words else "UNKNOWN",
            state_flags=words[1:],
            reason=fields[3].strip() if len(fields) > 3 else "",
            exit_code=exit_code,
            signal=signal,
        )
    return found


_BASE_STATES = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "REQUEUED": JobState.REQUEUED,
    "REQUEUE_FED": JobState.REQUEUED,
    "COMPLETED": JobState.COMPLETED,
    "FAILED": JobState.FAILED,
    "BOOT_FAIL": JobState.NODE_FAIL,
    "DEADLINE": JobState.TIMED_OUT,
    "SPECIAL_EXIT": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
    "TIMEOUT": JobState.TIMED_OUT,
    "PREEMPTED": JobState.PREEMPTED,
    "NODE_FAIL": JobState.NODE_FAIL,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
}


def job_state_of(record: SlurmJobRecord) -> JobState:
    """Map SLURM's words onto ``JobState``; a job still completing is not finished yet."""
    flags = set(record.state_flags)
    if "COMPLETING" in flags or "REQUEUED" in flags and record.state in ("PENDING", "COMPLETING"):
        # The batch shell may still be writing its exit marker, or the job is going back in the queue.
        return JobState.REQUEUED if "REQUEUED" in flags else JobState.RUNNING
    return _BASE_STATES.get(record.state, JobState.UNKNOWN)
