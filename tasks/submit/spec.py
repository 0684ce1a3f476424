"""What a training job asks of a scheduler, and what the scheduler says back.

One ``JobSpec`` renders to a local torchrun launch, an sbatch script and a Kubernetes manifest;
every backend maps its scheduler's states onto the one ``JobState`` enum. The workload's exit codes
(of ``python -m eve_model.train`` and of every workload these backends run) are
``eve_model.exit_codes.ExitCode``.
"""

from __future__ import annotations

import enum
import re
import sys
from pathlib import Path

from pydantic import BaseModel, Field, field_validator, model_validator

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Values that reach scheduler directives (#SBATCH lines, Kubernetes names) are restricted to a
# charset that no parser can misread; free text (the run name) is shell-quoted instead.
_SCHEDULER_TOKEN = re.compile(r"^[A-Za-z0-9_.,:=@+\-/\[\]|&()!*]*$")

FLUSH_MARGIN_SECONDS = 15
"""Added to step + save time in ``JobSpec.flush_seconds``: the ranks' agreement, the exit, the
supervisor's exit marker."""
SCHEDULER_SIGNAL_MARGIN_SECONDS = 30
"""Between the end of the flush and the scheduler's SIGKILL: slurmctld checks time limits on a
~30 s cycle, and a pod's grace period also covers the supervisor's exit."""


class JobState(str, enum.Enum):
    """One end-state vocabulary for every scheduler (a timeout, a preemption and a failure need different answers: keep them apart)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    REQUEUED = "REQUEUED"
    """Back in the queue after preemption or `scontrol requeue`; it resumes from its checkpoint."""
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"
    PREEMPTED = "PREEMPTED"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    UNKNOWN = "UNKNOWN"
    """The scheduler no longer knows the job and it left no exit marker."""

    @property
    def is_final(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING, JobState.REQUEUED)


class JobSpec(BaseModel):
    """One training stage as a distributed job, independent of the scheduler that runs it."""

    name: str = Field(min_length=1, max_length=1000)
    """Human name of the job (run and stage). Free text: it is shell-quoted where it appears and
    reduced to a safe identifier where a scheduler needs one (``scheduler_name``)."""

    command: list[str] = Field(min_length=1)
    """The argv each rank executes under torchrun (``--no-python``), e.g.
    ``[python_executable, "-m", "eve_model.train", "/path/stage.json"]``. On Kubernetes a leading
    ``python_executable`` is replaced by the image's interpreter."""

    workdir: Path
    """Working directory of every rank (the repository checkout on the nodes)."""

    env: dict[str, str] = Field(default_factory=dict)
    """Plain environment variables for every rank; visible in rendered scripts and manifests."""

    secret_env_names: list[str] = Field(default_factory=list)
    """Names of secret variables (e.g. WANDB_API_KEY). Their values are taken from the submitting
    process's environment (local, SLURM) or a Kubernetes Secret and never written to a file or log."""

    nodes: int = Field(default=1, ge=1)
    """Number of nodes; one torchrun agent per node."""

    gpus_per_node: int = Field(default=0, ge=0)
    """GPUs per node. 0 means a CPU job (gloo), where ``tasks_per_node`` sets the rank count."""

    tasks_per_node: int = Field(default=1, ge=1)
    """Processes (ranks) per node on CPU; on GPU jobs the rank count per node is ``gpus_per_node``."""

    cpus_per_task: int = Field(default=1, ge=1)
    """CPU cores reserved for each rank."""

    memory_gb: int | None = Field(default=None, ge=1)
    """Memory per node in GiB; None takes the scheduler's default."""

    time_limit_minutes: int | None = Field(default=60, ge=1)
    """Wall-clock limit of one attempt; the pre-timeout signal arrives before it. None sets no
    limit of the platform's own: none locally, the partition's default on SLURM, no
    ``activeDeadlineSeconds`` on Kubernetes."""

    partition: str | None = None
    """SLURM partition (Kubernetes: ignored)."""

    account: str | None = None
    """SLURM account to charge."""

    qos: str | None = None
    """SLURM quality of service."""

    constraint: str | None = None
    """SLURM node feature constraint, e.g. ``a100&ib``."""

    container_image: str | None = None
    """Container image: required on Kubernetes; on SLURM passed to pyxis (``srun --container-image``)."""

    container_options: list[str] = Field(default_factory=list)
    """Extra ``srun`` options for the container runtime, e.g. ``["--container-mounts=/data:/data"]``."""

    requeue: bool = True
    """Let the scheduler requeue the job after preemption or node failure."""

    checkpoint_save_seconds: int = Field(default=60, ge=1)
    """Worst-case time for all ranks to write one step checkpoint, configured or measured (the
    training job records every save's duration in ``checkpoints/save_seconds.jsonl``;
    ``tasks.stages`` raises this to 1.5x the longest one measured). The flush timing is derived
    from it (``flush_seconds``)."""

    max_step_seconds: int = Field(default=30, ge=1)
    """Longest optimizer step: a rank notices a signal only at a step boundary, so the flush may
    start this late."""

    pre_timeout_signal_seconds: int | None = Field(default=None, ge=0)
    """Seconds before the time limit at which the workload gets SIGUSR1 (forwarded as SIGTERM to
    the ranks) so that it flushes a checkpoint and exits ``ExitCode.REQUEUE``. None derives it
    from the flush time (``signal_lead_seconds``); 0 disables the signal; a value shorter than
    ``flush_seconds`` is refused (the flush would be killed at the limit)."""

    exclusive: bool = False
    """Whole nodes only (SLURM ``--exclusive``): no other job shares the node's GPUs, NICs or page
    cache. GPU recipes set it."""

    gpu_type: str | None = None
    """GPU model the job needs (SLURM ``--gpus-per-node=<type>:<n>``, e.g. ``a100``), so a
    heterogeneous partition cannot place it on smaller GPUs."""

    runtime_environment: str | None = None
    """A named environment on shared storage (venv or conda prefix, the same path on every node)
    whose ``bin/python`` runs the job; the alternative to ``container_image``. A GPU job must name
    one of the two: the submitting machine's interpreter is not the nodes' runtime."""

    container_workdir: str = "/opt/eve-platform"
    """Working directory inside ``container_image``: where the image holds the platform's code."""

    container_python: str = "python"
    """Interpreter inside ``container_image``."""

    shared_paths: list[str] = Field(default_factory=list)
    """Paths the ranks read or write (stage config, dataset, init checkpoint, outputs): every node
    must see them at the same path. The Kubernetes backend refuses a path no volume mounts."""

    log_dir: Path
    """Directory (shared between nodes) for the job log, exit markers and rendered scripts."""

    max_resubmits: int = Field(default=3, ge=0)
    """How often a resumable end (timeout or preemption with a flushed checkpoint) is resubmitted
    before the stage counts as failed."""

    python_executable: str = sys.executable
    """Interpreter on the nodes that runs torchrun (a shared venv path)."""

    rendezvous_port: int | None = Field(default=None, ge=1024, le=65535)
    """c10d rendezvous port on the first node; None derives one from the job id."""

    @field_validator("gpu_type")
    @classmethod
    def _gpu_type_is_plain(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z0-9_.\-]+$", value):
            raise ValueError(f"GPU type {value!r} must be a plain word such as a100")
        return value

    @field_validator("env")
    @classmethod
    def _env_names_are_identifiers(cls, env: dict[str, str]) -> dict[str, str]:
        for key in env:
            if not _ENV_NAME.match(key):
                raise ValueError(f"environment variable name {key!r} is not a shell identifier")
        return env

    @field_validator("secret_env_names")
    @classmethod
    def _secret_names_are_identifiers(cls, names: list[str]) -> list[str]:
        for key in names:
            if not _ENV_NAME.match(key):
                raise ValueError(f"secret variable name {key!r} is not a shell identifier")
        return names

    @field_validator("partition", "account", "qos", "constraint")
    @classmethod
    def _scheduler_tokens_are_plain(cls, value: str | None) -> str | None:
        if value is not None and not _SCHEDULER_TOKEN.match(value):
            raise ValueError(f"{value!r} contains characters a scheduler directive cannot carry")
        return value

    @field_validator("container_image")
    @classmethod
    def _image_is_plain(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z0-9_.:/@\-]+$", value):
            raise ValueError(f"container image {value!r} is not a plain image reference")
        return value

    @model_validator(mode="after")
    def _secrets_are_not_plain(self) -> "JobSpec":
        overlap = set(self.env) & set(self.secret_env_names)
        if overlap:
            raise ValueError(f"{sorted(overlap)} are listed both as plain env and as secrets")
        return self

    @model_validator(mode="after")
    def _flush_fits(self) -> "JobSpec":
        if self.pre_timeout_signal_seconds and self.pre_timeout_signal_seconds < self.flush_seconds:
            raise ValueError(
                f"pre_timeout_signal_seconds={self.pre_timeout_signal_seconds} is shorter than a flush "
                f"({self.flush_seconds} s = step {self.max_step_seconds} + save {self.checkpoint_save_seconds} "
                f"+ {FLUSH_MARGIN_SECONDS} margin): the time limit would kill the checkpoint"
            )
        lead = self.signal_lead_seconds
        if self.time_limit_minutes is not None and lead and lead >= self.time_limit_minutes * 60:
            raise ValueError(
                f"the pre-timeout signal ({lead} s) would arrive before the job starts working "
                f"(time limit {self.time_limit_minutes} min); raise the limit or lower the save time"
            )
        if self.gpus_per_node and not (self.container_image or self.runtime_environment):
            raise ValueError(
                "a GPU job needs its runtime named: container_image (pyxis/enroot on SLURM) or "
                "runtime_environment (an environment on shared storage); the submitting machine's "
                "interpreter is not what the nodes run"
            )
        return self

    @property
    def flush_seconds(self) -> int:
        """From a stop signal to a complete checkpoint and exit: the current step, the save, a margin."""
        return self.max_step_seconds + self.checkpoint_save_seconds + FLUSH_MARGIN_SECONDS

    @property
    def shutdown_timeout_seconds(self) -> int:
        """How long torchrun waits for its ranks after forwarding SIGTERM before it SIGKILLs them
        (``--shutdown-timeout``; torchrun's own default, 30 s, kills a large ZeRO-3 save)."""
        return self.flush_seconds

    @property
    def signal_lead_seconds(self) -> int:
        """Seconds before the time limit at which the job is told to flush (0: never)."""
        if self.pre_timeout_signal_seconds is not None:
            return self.pre_timeout_signal_seconds
        return self.shutdown_timeout_seconds + SCHEDULER_SIGNAL_MARGIN_SECONDS

    @property
    def termination_grace_seconds(self) -> int:
        """Kubernetes ``terminationGracePeriodSeconds``: SIGTERM to SIGKILL on eviction or delete."""
        return self.shutdown_timeout_seconds + SCHEDULER_SIGNAL_MARGIN_SECONDS

    @property
    def runtime_python(self) -> str:
        """The interpreter the nodes run: the image's, the shared environment's, or ``python_executable``."""
        if self.container_image:
            return self.container_python
        if self.runtime_environment:
            return f"{self.runtime_environment.rstrip('/')}/bin/python"
        return self.python_executable

    @property
    def runtime_command(self) -> list[str]:
        """``command`` with a leading ``python_executable`` (the submitting machine's interpreter)
        replaced by ``runtime_python``."""
        if self.command[0] == self.python_executable:
            return [self.runtime_python, *self.command[1:]]
        return list(self.command)

    @property
    def ranks_per_node(self) -> int:
        """Processes torchrun starts on each node."""
        return self.gpus_per_node if self.gpus_per_node > 0 else self.tasks_per_node

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node

    @property
    def scheduler_name(self) -> str:
        """The name reduced to ``[a-z0-9-]`` (max 50 chars), safe for SLURM and Kubernetes."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")
        return (slug or "job")[:50].rstrip("-") or "job"


class JobAttempt(BaseModel):
    """One run of a job that ended: a scheduler requeue keeps the job id and counts ``restart`` up,
    a resubmission gets a new job id."""

    job_id: str
    """Scheduler id (the same for every requeue of one SLURM job)."""
    restart: int = 0
    """The scheduler's requeue count of this job id when this run ended (SLURM Restarts)."""
    state: JobState
    """How this run ended (REQUEUED for a run the scheduler put back in the queue)."""
    exit_code: int | None = None
    """The workload's exit code, when known."""
    reason: str = ""
    """The scheduler's reason or the platform's explanation."""


class JobHandle(BaseModel):
    """What ``submit`` returns: enough to find the job again from another process."""

    backend: str
    """Name of the backend that submitted it: local, slurm or k8s."""
    job_id: str
    """Scheduler id of the current attempt (SLURM job id, local supervisor pid, k8s object name)."""
    spec: JobSpec
    """The spec it was submitted with (resubmission reuses it)."""
    log_path: Path
    """File the job's stdout/stderr goes to (local, SLURM); empty for k8s (pod logs)."""
    attempt_job_ids: list[str] = Field(default_factory=list)
    """Every attempt's id, oldest first, including the current one (lineage records them)."""
    namespace: str | None = None
    """Kubernetes namespace."""
    attempts: list[JobAttempt] = Field(default_factory=list)
    """Every run that ended so far, oldest first: requeues under the same id and resubmissions."""


class JobStatus(BaseModel):
    """One observation of a job."""

    state: JobState
    exit_code: int | None = None
    """Exit code of the workload when known (the exit marker's value beats the scheduler's)."""
    reason: str = ""
    """Scheduler reason or a short explanation (e.g. 'pre-timeout signal USR1; checkpoint flushed')."""
    resumable: bool = False
    """The workload flushed a checkpoint and asked to be resumed (``ExitCode.REQUEUE``), so
    resubmitting continues it."""
    log_tail: str = ""
    """Last lines of the job log, filled for failed end states."""
    restarts: int = 0
    """Scheduler requeues of this attempt (SLURM Restarts)."""
