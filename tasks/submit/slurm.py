"""SLURM backend: sbatch a rendered script, poll squeue -> scontrol -> sacct -> exit marker.

Status sources, in order (as mature SLURM clients do): ``squeue --json`` while the job is
known to the controller, ``scontrol show job -o`` (covers the MinJobAge window and old squeues),
``sacct`` (parsable text) where accounting runs, once the controller has forgotten the job after
``MinJobAge``, and finally the exit marker the batch shell writes.
The marker also carries the workload's real exit code, which beats the scheduler's when the job
ended: ``ExitCode.REQUEUE`` means "checkpoint flushed, resume me".
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
import uuid
from pathlib import Path

from tasks.submit.base import (
    Backend,
    SubmitError,
    prepare_log_dir,
    read_exit_marker,
    status_from_marker,
)
from tasks.submit.render import INFRA_DIR, shell_template_environment
from tasks.submit.slurm_state import (
    SACCT_FORMAT,
    SlurmJobRecord,
    job_state_of,
    parse_jobs_json,
    parse_sacct_parsable,
    parse_scontrol_show_job,
)
from tasks.submit.spec import JobHandle, JobSpec, JobState, JobStatus

logger = logging.getLogger(__name__)

SLURM_TEMPLATE_DIR = INFRA_DIR / "slurm"
_UNREACHABLE_HINTS = (
    "unable to contact slurm controller",
    "socket timed out",
    "connection refused",
    "communication connection failure",
    "zero bytes were transmitted",
)


def batch_workdir(spec: JobSpec) -> Path:
    """Where the batch shell runs: the checkout, or with a container image (whose code lives in
    ``container_workdir`` inside it) the shared log folder, which every node has."""
    return Path(spec.log_dir if spec.container_image else spec.workdir)


def render_sbatch_script(spec: JobSpec) -> str:
    """The batch script for ``spec`` (infra/slurm/stage.sbatch.j2)."""
    template = shell_template_environment(SLURM_TEMPLATE_DIR).get_template("stage.sbatch.j2")
    return template.render(spec=spec, workdir=batch_workdir(spec), pod_env=False)


class SlurmBackend(Backend):
    """Submits through the SLURM command-line clients of the machine it runs on."""

    name = "slurm"

    def __init__(
        self,
        slurm_conf: str | os.PathLike | None = None,
        command_timeout_seconds: float = 30.0,
        unreachable_retries: int = 4,
        retry_backoff_seconds: float = 1.0,
    ) -> None:
        """``slurm_conf``: the cluster's slurm.conf (None: the clients' default / ``$SLURM_CONF``)."""
        self.slurm_conf = str(slurm_conf) if slurm_conf else None
        self.command_timeout_seconds = command_timeout_seconds
        self.unreachable_retries = unreachable_retries
        self.retry_backoff_seconds = retry_backoff_seconds

    # -- scheduler commands ------------------------------------------------------------------

    def _environment(self) -> dict[str, str]:
        environment = dict(os.environ)
        if self.slurm_conf:
            environment["SLURM_CONF"] = self.slurm_conf
        return environment

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        """Run a SLURM client; an unreachable controller is retried with exponential backoff."""
        delay = self.retry_backoff_seconds
        for attempt in range(self.unreachable_retries + 1):
            try:
                result = subprocess.run(
                    argv,
                    capture_output=True,
                    text=True,
                    env=self._environment(),
                    timeout=self.command_timeout_seconds,
                )
            except subprocess.TimeoutExpired:
                result = subprocess.CompletedProcess(argv, 124, "", f"{argv[0]} timed out")
            except FileNotFoundError as error:
                raise SubmitError(f"{argv[0]} not found: is the SLURM client installed here?") from error
            unreachable = result.returncode != 0 and any(
                hint in result.stderr.lower() for hint in _UNREACHABLE_HINTS + (" timed out",)
            )
            if not unreachable or attempt == self.unreachable_retries:
                break
            logger.warning("%s: controller unreachable (%s); retry in %.1f s", argv[0], result.stderr.strip(), delay)
            time.sleep(delay)
            delay *= 2
        if check and result.returncode != 0:
            raise SubmitError(f"{' '.join(argv[:2])} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    # -- interface ---------------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> JobHandle:
        missing = [name for name in spec.secret_env_names if name not in os.environ]
        if missing:
            raise SubmitError(f"secret environment variables not set in the submitting process: {missing}")
        spec = prepare_log_dir(spec)
        log_dir = spec.log_dir
        script_path = log_dir / f"{spec.scheduler_name}-{uuid.uuid4().hex[:8]}.sbatch"
        script_path.write_text(render_sbatch_script(spec))
        script_path.chmod(0o700)
        result = self._run(
            [
                "sbatch",
                "--parsable",
                f"--output={log_dir}/slurm-%j.log",
                f"--chdir={batch_workdir(spec).resolve()}",
                str(script_path),
            ]
        )
        job_id = result.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise SubmitError(f"sbatch returned no job id: {result.stdout!r}")
        return JobHandle(
            backend=self.name,
            job_id=job_id,
            spec=spec,
            log_path=log_dir / f"slurm-{job_id}.log",
            attempt_job_ids=[job_id],
        )

    def describe_submission(self, handle: JobHandle) -> str:
        spec = handle.spec
        per_node = f"{spec.gpus_per_node} GPU(s){f' {spec.gpu_type}' if spec.gpu_type else ''}" if spec.gpus_per_node else f"{spec.ranks_per_node} rank(s)"
        return (f"submitted {spec.name!r} as SLURM job {handle.job_id} (partition {spec.partition or 'default'}, "
                f"{spec.nodes} node(s) x {per_node}{', exclusive' if spec.exclusive else ''})")

    def scheduler_record(self, job_id: str) -> SlurmJobRecord | None:
        """What SLURM knows about the job, from the first source that still knows it."""
        squeue = self._run(["squeue", "--json", "--states=all", f"--jobs={job_id}"], check=False)
        if squeue.returncode == 0:
            try:
                record = parse_jobs_json(json.loads(squeue.stdout), job_id)
            except ValueError:
                record = None
            if record is not None:
                return record
        scontrol = self._run(["scontrol", "show", "job", "-o", job_id], check=False)
        if scontrol.returncode == 0:
            record = parse_scontrol_show_job(scontrol.stdout)
            if record is not None:
                return record
        sacct = self._run(["sacct", "-X", "-P", "-n", f"--format={SACCT_FORMAT}", f"--jobs={job_id}"], check=False)
        if sacct.returncode == 0:
            return parse_sacct_parsable(sacct.stdout, job_id)
        return None

    def status(self, handle: JobHandle) -> JobStatus:
        record = self.scheduler_record(handle.job_id)
        marker = read_exit_marker(handle.spec.log_dir, handle.job_id)
        if record is None:
            if marker is None:
                return JobStatus(state=JobState.UNKNOWN, reason="SLURM no longer knows the job and it left no exit marker")
            status = status_from_marker(marker)
        else:
            state = job_state_of(record)
            if not state.is_final:
                return JobStatus(state=state, reason=record.reason, restarts=record.restarts)
            status = self._final_status(record, state, marker)
        return self.with_log_tail(handle, status)

    @staticmethod
    def _final_status(record: SlurmJobRecord, state: JobState, marker: dict | None) -> JobStatus:
        # A marker from an earlier attempt of a requeued job does not describe this one.
        if marker is not None and int(marker.get("restart_count", 0)) != record.restarts:
            marker = None
        if state == JobState.CANCELLED:
            reason = record.reason if record.reason not in ("", "None") else "cancelled (scancel by a user or an administrator)"
            return JobStatus(state=state, exit_code=record.exit_code, reason=reason, restarts=record.restarts)
        if marker is not None:
            status = status_from_marker(marker, scheduler_state=state)
            if state in (JobState.TIMED_OUT, JobState.PREEMPTED, JobState.NODE_FAIL, JobState.OUT_OF_MEMORY) and not status.resumable:
                status.state = state
            status.restarts = record.restarts
            return status
        reason = record.reason if record.reason not in ("", "None") else state.value.lower()
        if record.signal:
            reason = f"{reason} (signal {record.signal})"
        return JobStatus(state=state, exit_code=record.exit_code, reason=reason, restarts=record.restarts)

    def cancel(self, handle: JobHandle) -> None:
        self._run(["scancel", handle.job_id])

    def requeue(self, handle: JobHandle) -> None:
        """Ask SLURM to stop and requeue the job (admin action; the job resumes from its checkpoint)."""
        self._run(["scontrol", "requeue", handle.job_id])
