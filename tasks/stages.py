"""Training stages as cached, resumable units of a retrain (design.md 3.10).

A stage's cache key is the hash of what determines its result: the input dataset, the parent
checkpoint's content, the stage config and the code revision. The stage writes into a folder
named after that key, so

- an unchanged stage finds its finished output and is skipped (nothing is trained twice);
- a stage that failed or was killed finds its own DeepSpeed checkpoints in the same folder, and
  the training entry point resumes from them;
- a changed input gets a new folder, and old results stay addressable for lineage.

Outputs are referenced by path and hash, never pickled into Prefect results: a 7B checkpoint
is many GB and lives on shared storage.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import task
from prefect.logging import get_run_logger
from pydantic import BaseModel, Field

from eve_model.hashing import directory_sha256
from eve_model.training.config import StageConfig
from tasks.platform import REPO_ROOT, PlatformSettings
from tasks.submit.spec import JobSpec, JobState

STAGE_RESULT_NAME = "stage_result.json"


class StageFailed(RuntimeError):
    """A stage's job ended in a state other than completed; the message says how and why."""


class StageResult(BaseModel):
    """What a finished stage hands to the next one and to lineage."""

    stage: str
    """"base-llm", "1", "2" or "3"."""

    cache_key: str
    """sha256 of (dataset hash, parent checkpoint hash, stage config hash, code revision)."""

    output_dir: str
    """The stage's folder: checkpoints, logs, metrics.jsonl, and ``final/``."""

    model_dir: str
    """The final HF model directory (``output_dir/final``)."""

    checkpoint_hash: str
    """``eve_model.hashing.directory_sha256`` of the final model directory."""

    dataset_hash: str
    """The dataset the stage trained on."""

    parent_checkpoint_hash: str | None
    """Content hash of the init checkpoint; None for a from-scratch bootstrap."""

    config_hash: str
    """``StageConfig.content_hash()``."""

    code_revision: str
    """Git revision of the code that trained it (with a diff hash when the tree was dirty)."""

    skipped: bool = False
    """True when this result was found in the cache instead of trained by this run."""

    job_ids: list[str] = Field(default_factory=list)
    """Scheduler job ids of every attempt (requeues and resubmits included)."""

    backend: str = "local"
    """Backend that ran the job."""

    final_metrics: dict[str, Any] = Field(default_factory=dict)
    """The job's ``final_metrics.json``."""

    wall_seconds: float = 0.0
    """Wall-clock time of this run's job (0 when skipped)."""


def code_revision(repo: Path = REPO_ROOT) -> str:
    """The revision of the code that trains: git tree hashes of ``eve_model/`` and ``infra/``, plus a
    hash of their uncommitted diff.

    Tree hashes, not the commit: a README or flow change must not invalidate every trained stage,
    while any change to the training code or its DeepSpeed/launch templates must. A dirty tree never
    shares a key with its commit.
    """
    try:
        trees = subprocess.run(
            ["git", "rev-parse", "HEAD:eve_model", "HEAD:infra"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.split()
        diff = subprocess.run(
            ["git", "diff", "HEAD", "--", "eve_model", "infra"], cwd=repo, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unversioned"
    revision = "trees:" + hashlib.sha256(" ".join(trees).encode()).hexdigest()[:20]
    if diff:
        return f"{revision}+dirty.{hashlib.sha256(diff).hexdigest()[:12]}"
    return revision


def platform_commit(repo: Path = REPO_ROOT) -> str:
    """The checked-out commit (``+dirty`` when tracked files are modified), for lineage."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unversioned"
    return f"{head}+dirty" if dirty else head


def stage_cache_key(
    dataset_hash: str, parent_checkpoint_hash: str | None, config_hash: str, revision: str
) -> str:
    canonical = json.dumps(
        {"dataset": dataset_hash, "parent": parent_checkpoint_hash, "config": config_hash, "code": revision},
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def stage_output_dir(settings: PlatformSettings, stage: str, cache_key: str) -> Path:
    return settings.runs_dir / "stages" / f"stage-{stage}-{cache_key[:16]}"


def plan_stage(
    config: StageConfig,
    settings: PlatformSettings,
    parent_checkpoint_hash: str | None,
    revision: str | None = None,
) -> StageConfig:
    """The config with ``output_dir`` set to the folder of its cache key.

    ``output_dir`` is not part of ``content_hash`` (it is a location, not a semantic input), so
    the key can be computed first and the folder named after it.
    """
    if config.dataset_hash is None:
        raise StageFailed(f"stage {config.stage}: the platform always pins the dataset hash")
    key = stage_cache_key(
        config.dataset_hash, parent_checkpoint_hash, config.content_hash(), revision or code_revision()
    )
    return config.model_copy(update={"output_dir": str(stage_output_dir(settings, str(config.stage), key))})


def find_cached_result(output_dir: Path, cache_key: str) -> StageResult | None:
    """A finished result in ``output_dir`` for exactly this key, or None."""
    result_path = output_dir / STAGE_RESULT_NAME
    if not result_path.exists():
        return None
    result = StageResult.model_validate_json(result_path.read_text())
    if result.cache_key != cache_key or not (Path(result.model_dir) / "config.json").exists():
        return None
    return result.model_copy(update={"skipped": True, "wall_seconds": 0.0})


def build_job_spec(config_path: Path, config: StageConfig, template: JobSpec) -> JobSpec:
    """The job that runs one stage: the training entry point on the stage config, with the
    resources, scheduler options and environment of ``template``."""
    return template.model_copy(
        update={
            "name": f"{template.name}-stage-{config.stage}",
            "command": [template.python_executable, "-m", "eve_model.train", str(config_path)],
            "log_dir": str(Path(config.output_dir) / "logs"),
        }
    )


def run_stage_job(
    config: StageConfig,
    job_template: JobSpec,
    backend_name: str,
    backend_options: dict[str, Any] | None = None,
    parent_checkpoint_hash: str | None = None,
    revision: str | None = None,
    on_log: Callable[[str], None] | None = None,
    poll_seconds: float = 2.0,
    timeout_seconds: float | None = None,
) -> StageResult:
    """Run (or find cached) one stage. ``config.output_dir`` must be the key's folder
    (``plan_stage`` builds it so)."""
    from tasks.submit.base import get_backend  # imported late: backends pull in kubernetes/jinja

    revision = revision or code_revision()
    if config.dataset_hash is None:
        raise StageFailed(f"stage {config.stage}: the platform always pins the dataset hash")
    cache_key = stage_cache_key(config.dataset_hash, parent_checkpoint_hash, config.content_hash(), revision)
    output_dir = Path(config.output_dir)
    cached = find_cached_result(output_dir, cache_key)
    if cached is not None:
        return cached

    output_dir.mkdir(parents=True, exist_ok=True)
    config_path = config.write(output_dir / "stage_config.json")
    spec = build_job_spec(config_path, config, job_template)
    backend = get_backend(backend_name, **(backend_options or {}))
    started = time.monotonic()
    handle = backend.submit(spec)
    status = backend.wait(handle, poll_seconds=poll_seconds, timeout_seconds=timeout_seconds, on_log=on_log)
    wall_seconds = time.monotonic() - started
    job_ids = list(getattr(handle, "attempt_job_ids", None) or [handle.job_id])
    if status.state != JobState.COMPLETED:
        raise StageFailed(
            f"stage {config.stage} ended {status.state.value}"
            + (f" with exit code {status.exit_code}" if status.exit_code is not None else "")
            + (f": {status.reason}" if status.reason else "")
            + (f"\n--- log tail ---\n{status.log_tail}" if status.log_tail else "")
        )
    model_dir = output_dir / "final"
    metrics_path = model_dir / "final_metrics.json"
    if not metrics_path.exists():
        raise StageFailed(f"stage {config.stage} reported success but wrote no {metrics_path}")
    result = StageResult(
        stage=str(config.stage),
        cache_key=cache_key,
        output_dir=str(output_dir),
        model_dir=str(model_dir),
        checkpoint_hash=directory_sha256(model_dir),
        dataset_hash=config.dataset_hash,
        parent_checkpoint_hash=parent_checkpoint_hash,
        config_hash=config.content_hash(),
        code_revision=revision,
        job_ids=job_ids,
        backend=backend_name,
        final_metrics=json.loads(metrics_path.read_text()),
        wall_seconds=round(wall_seconds, 2),
    )
    tmp = output_dir / f".{STAGE_RESULT_NAME}.tmp"
    tmp.write_text(result.model_dump_json(indent=2))
    tmp.replace(output_dir / STAGE_RESULT_NAME)
    return result


@task(name="cached-stage", task_run_name="cached-stage-{config.stage}")
def cached_stage(config: StageConfig, parent_checkpoint_hash: str | None = None) -> StageResult:
    """The cached result of a stage that must not be retrained; fails when there is none."""
    key = stage_cache_key(config.dataset_hash or "", parent_checkpoint_hash, config.content_hash(), code_revision())
    result = find_cached_result(Path(config.output_dir), key)
    if result is None:
        raise StageFailed(
            f"stage {config.stage} has no cached result for these inputs (key {key[:16]}); "
            "run the full retrain, or start from an earlier stage"
        )
    return result


@task(name="train-stage", retries=0, task_run_name="stage-{config.stage}")
def train_stage(
    config: StageConfig,
    job_template: JobSpec,
    backend_name: str,
    backend_options: dict[str, Any] | None = None,
    parent_checkpoint_hash: str | None = None,
) -> StageResult:
    """Prefect task around ``run_stage_job``; the job log streams into the run's log.

    No Prefect retries: a failed job resumes from its checkpoint when the flow is rerun, and
    the backend itself resubmits preempted or timed-out jobs.
    """
    logger = get_run_logger()
    result = run_stage_job(
        config,
        job_template,
        backend_name,
        backend_options,
        parent_checkpoint_hash=parent_checkpoint_hash,
        on_log=lambda text: [logger.info(line) for line in text.splitlines() if line.strip()],
    )
    if result.skipped:
        logger.info("stage %s unchanged (cache key %s): reusing %s", config.stage, result.cache_key[:16], result.model_dir)
    else:
        logger.info("stage %s trained in %.1f s -> %s", config.stage, result.wall_seconds, result.model_dir)
    return result
