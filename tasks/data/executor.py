"""Where the data steps' shards run: in the flow's own process, or on a Dask cluster through Prefect.

One switch, ``DataExecutorConfig.kind`` (``DataFlowParams.executor``; in a retrain ``data.executor``):

- ``local`` (the default): today's in-process path; nothing to start, the README demo needs no cluster.
- ``dask-local``: a ``distributed.LocalCluster`` of ``workers`` processes on this machine.
- ``dask-slurm``: a ``dask_jobqueue.SLURMCluster``; every Dask worker is one SLURM job (``sbatch`` on
  this machine's ``SLURM_CONF``), started when the step starts and cancelled when it ends.
- ``dask-kubernetes``: a ``DaskCluster`` object of the Dask Kubernetes operator, rendered from
  ``infra/k8s/dask-cluster.yaml.j2`` (``render_dask_cluster_manifest``); the flow connects to its
  scheduler service. The operator's Python package is deliberately not a dependency: the manifest is
  data, applied like the platform's other Kubernetes objects (``kubectl apply -f``), and the runner
  only needs the scheduler's address.

``dask_task_runner`` turns the config into ``prefect_dask.DaskTaskRunner``: each shard is one Prefect
task run on a Dask worker, so the Prefect UI shows one task run per shard. Whatever the kind, the same
input gives the same dataset hash (``tasks.data.shard_ingest``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from tasks.submit.render import INFRA_DIR, yaml_template_environment

ExecutorKind = Literal["local", "dask-local", "dask-slurm", "dask-kubernetes"]
DASK_CLUSTER_TEMPLATE = "dask-cluster.yaml.j2"
DASK_SCHEDULER_PORT = 8786
DEFAULT_MAX_ITEMS_PER_TASK = 1000


class SlurmWorkerOptions(BaseModel):
    """What each Dask worker job asks SLURM for (``dask-slurm``)."""

    partition: str | None = None
    """Partition (``#SBATCH -p``); None: the cluster's default partition."""

    account: str | None = None
    """Account to charge (``#SBATCH -A``); None: the submitting user's default."""

    walltime_minutes: int = Field(default=240, ge=1)
    """Wall-time limit of one worker job (``#SBATCH -t``). A worker that reaches it ends, and its shard is
    run again elsewhere; size it above the ingest's expected wall time (docs/data-at-scale.md)."""

    job_extra_directives: list[str] = Field(default_factory=list)
    """Further ``#SBATCH`` options, each without the prefix (e.g. ``--gres=gpu:1``, ``--constraint=ssd``)."""

    job_script_prologue: list[str] = Field(default_factory=list)
    """Shell lines run before the worker starts (e.g. ``source /opt/eve/.venv/bin/activate``,
    ``cd /shared/eve``): the node needs the platform's code and Python environment."""

    python: str | None = None
    """Python executable that starts the worker on the node; None: the flow's own (``sys.executable``),
    right when nodes share the platform's installation."""

    log_directory: str | None = None
    """Folder for the worker jobs' stdout/stderr; None: SLURM's default (the submit directory)."""


class KubernetesWorkerOptions(BaseModel):
    """The DaskCluster object of ``dask-kubernetes`` (rendered, applied by the operator)."""

    namespace: str = "eve"
    """Namespace of the DaskCluster and its pods."""

    cluster_name: str = Field(default="eve-data", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """Name of the DaskCluster; the operator names the scheduler service ``<name>-scheduler``."""

    image: str = "ghcr.io/eve-platform/eve:latest"
    """Container image of scheduler and workers: the platform's image (same code and Python as the flow)."""

    scheduler_address: str | None = None
    """Address the flow connects to; None: the in-cluster service,
    ``tcp://<cluster_name>-scheduler.<namespace>.svc.cluster.local:8786`` (the flow runs in the cluster)."""

    worker_memory: str = "8Gi"
    """Memory request and limit of one worker pod."""

    data_volume_claim: str = "eve-home"
    """PersistentVolumeClaim mounted at ``EVE_HOME`` in every worker: the staging folder must be shared."""


class DataExecutorConfig(BaseModel):
    """Where the data steps run: the flow's own process (``local``) or a Dask cluster, one shard per task."""

    kind: ExecutorKind = "local"
    """``local``: in the flow's process (the default, needs no cluster); ``dask-local``: a Dask
    LocalCluster on this machine; ``dask-slurm``: Dask workers as SLURM jobs (dask-jobqueue);
    ``dask-kubernetes``: a DaskCluster of the Dask Kubernetes operator."""

    workers: int = Field(default=2, ge=1, le=4096)
    """Dask workers to start (LocalCluster processes, SLURM jobs or worker pods)."""

    cores_per_worker: int = Field(default=1, ge=1)
    """CPU cores of one worker; each runs one shard at a time per core (``nthreads``)."""

    memory_per_worker: str = "4GiB"
    """Memory of one worker (its SLURM ``--mem``; Dask pauses and restarts a worker that outgrows it).
    A shard task holds its raw items and its written tar in memory: above twice a task's bytes per core."""

    items_per_task: int | None = Field(default=None, ge=1)
    """Source items per shard task; None: the step's ``max_items_per_shard``, at most 1,000. Smaller tasks
    spread better over workers and lose less to a killed worker; the output is the same whatever the value."""

    max_tasks_in_flight: int | None = Field(default=None, ge=1)
    """Shard tasks read and handed to the cluster but not finished yet; None: two per worker core (one
    running, one waiting). The flow holds their items in memory (it reads the sources once, in order, and
    ships each task's items to a worker): about this many times a task's bytes."""

    shard_retries: int = Field(default=2, ge=0)
    """Prefect retries of a shard whose task raised (a transient read or write error); a worker killed
    mid-shard is different: Dask reruns the shard elsewhere, up to ``allowed_worker_deaths`` times."""

    allowed_worker_deaths: int = Field(default=3, ge=0)
    """How many workers may die while running one shard before that shard is reported failed (the Dask
    scheduler's ``allowed_failures``; on Kubernetes the operator's scheduler keeps its own setting)."""

    slurm: SlurmWorkerOptions = Field(default_factory=SlurmWorkerOptions)
    """``dask-slurm`` only: the worker jobs' SLURM options."""

    kubernetes: KubernetesWorkerOptions = Field(default_factory=KubernetesWorkerOptions)
    """``dask-kubernetes`` only: the DaskCluster object."""

    @property
    def is_local(self) -> bool:
        return self.kind == "local"

    def tasks_in_flight(self) -> int:
        return self.max_tasks_in_flight or 2 * self.workers * self.cores_per_worker

    def items_per_shard_task(self, max_items_per_shard: int) -> int:
        return self.items_per_task or min(max_items_per_shard, DEFAULT_MAX_ITEMS_PER_TASK)


def _slurm_cluster_kwargs(config: DataExecutorConfig) -> dict[str, Any]:
    slurm = config.slurm
    return {
        "n_workers": config.workers,
        "cores": config.cores_per_worker,
        "processes": 1,
        "memory": config.memory_per_worker,
        "walltime": f"{slurm.walltime_minutes // 60:02d}:{slurm.walltime_minutes % 60:02d}:00",
        "queue": slurm.partition,
        "account": slurm.account,
        "job_name": "eve-dask-worker",
        "job_extra_directives": list(slurm.job_extra_directives),
        "job_script_prologue": list(slurm.job_script_prologue),
        "python": slurm.python or sys.executable,
        "log_directory": slurm.log_directory,
        # the workers reach the scheduler in the flow's process over the cluster network
        "scheduler_options": {"dashboard_address": None, "allowed_failures": config.allowed_worker_deaths},
        "worker_extra_args": ["--no-dashboard"],
    }


def dask_scheduler_address(config: DataExecutorConfig) -> str:
    """Where the flow finds the DaskCluster's scheduler (``dask-kubernetes``)."""
    options = config.kubernetes
    return options.scheduler_address or (
        f"tcp://{options.cluster_name}-scheduler.{options.namespace}.svc.cluster.local:{DASK_SCHEDULER_PORT}"
    )


def dask_task_runner(config: DataExecutorConfig):
    """The Prefect task runner of a ``dask-*`` config (``ValueError`` for ``local``: it needs none)."""
    from prefect_dask import DaskTaskRunner

    if config.kind == "dask-local":
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={"n_workers": config.workers, "threads_per_worker": config.cores_per_worker,
                            "processes": True, "memory_limit": config.memory_per_worker, "dashboard_address": None,
                            "scheduler_kwargs": {"allowed_failures": config.allowed_worker_deaths}},
        )
    if config.kind == "dask-slurm":
        return DaskTaskRunner(cluster_class="dask_jobqueue.SLURMCluster", cluster_kwargs=_slurm_cluster_kwargs(config))
    if config.kind == "dask-kubernetes":
        return DaskTaskRunner(address=dask_scheduler_address(config))
    raise ValueError("the local executor runs in the flow's process and has no task runner")


@contextlib.contextmanager
def flow_environment_kept() -> Iterator[None]:
    """Undo, when the block ends, what a Dask nanny writes into this process's environment.

    Before spawning each worker (at start and after a worker died) a nanny sets its
    ``distributed.nanny.pre-spawn-environ`` variables (``OMP_NUM_THREADS=1``, ``MKL_NUM_THREADS=1``,
    ``OPENBLAS_NUM_THREADS=1``, ``MALLOC_TRIM_THRESHOLD_``) and ``PYTHONHASHSEED`` in the *parent's*
    ``os.environ`` and leaves them there. The flow's process would then evaluate on one thread and every
    job it starts afterwards (training, a SLURM node sized by ``nproc``) would inherit them."""
    import dask

    names = {*(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {}), "PYTHONHASHSEED"}
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def render_dask_cluster_manifest(config: DataExecutorConfig, environment: dict[str, str] | None = None) -> str:
    """The DaskCluster object (``kubernetes.dask.org/v1``) for ``dask-kubernetes``, as YAML to apply.

    ``environment``: variables every worker gets (e.g. ``PREFECT_API_URL``; never a secret's value:
    reference secrets from the template's ``envFrom`` instead)."""
    template = yaml_template_environment(Path(INFRA_DIR) / "k8s").get_template(DASK_CLUSTER_TEMPLATE)
    options = config.kubernetes
    return template.render(ctx={
        "name": options.cluster_name,
        "namespace": options.namespace,
        "image": options.image,
        "workers": config.workers,
        "cores": config.cores_per_worker,
        "memory": options.worker_memory,
        "volume_claim": options.data_volume_claim,
        "scheduler_port": DASK_SCHEDULER_PORT,
        "env": [{"name": name, "value": value} for name, value in sorted((environment or {}).items())],
    })


__all__ = [
    "DataExecutorConfig",
    "ExecutorKind",
    "KubernetesWorkerOptions",
    "SlurmWorkerOptions",
    "dask_scheduler_address",
    "dask_task_runner",
    "flow_environment_kept",
    "render_dask_cluster_manifest",
]
