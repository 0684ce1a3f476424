"""Training stages as cached, resumable units of a retrain (docs/architecture.md, "Stage cache").

A stage's cache key is the hash of what determines its result: the input dataset's hash, the parent
checkpoint's weights hash, the stage config's content hash and the code-tree revision
(``eve_model.identity``). The stage writes into a folder named after that key, so

- an unchanged stage finds its finished output and is skipped (nothing is trained twice), after its
  weights hash is verified again: an edited or truncated ``final/`` is moved aside and retrained;
- a stage that failed or was killed finds its own DeepSpeed checkpoints in the same folder, and the
  training entry point resumes from them;
- a changed input gets a new folder, and old results stay addressable for lineage.

``plan_stage`` computes the key once and returns it with the config (``PlannedStage``); everything
later reads it from there.

While a job runs, ``train_stage`` streams its log into the task run's log (library chatter left out,
``tasks.log_filters``) and turns the job's throttled progress lines (``eve_model.training.progress``:
step, loss, samples/s, ETA) into the stage's Prefect progress artifact (``stage-<id>-progress``). Each
stage is an OpenLineage run (``stage-<id>``): its dataset and parent model in, its model out. Outputs are referenced by path and hash, never pickled into Prefect
results: a 7B checkpoint is many GB and lives on shared storage.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.logging import get_run_logger
from pydantic import BaseModel, Field

from eve_model.identity import CODE_REVISION_ENV, WeightsMismatch, code_tree_revision, verify_weights, weights_sha256
from eve_model.train import job_command
from eve_model.training.checkpointing import CheckpointManager
from eve_model.training.engine import SAVE_TIMINGS_PATH
from eve_model.training.config import (
    StageConfig,
    StageId,
    StageOverrides,
    StagePresetName,
    overrides_as_kwargs,
    preset_stage_config,
)
from eve_model.training.progress import ProgressReport, format_duration, parse_progress_line
from tasks.lineage.openlineage import lineage_run
from tasks.lineage.openlineage_refs import dataset_ref, model_ref
from tasks.log_filters import is_job_log_chatter
from tasks.locks import work_folder_lock
from tasks.platform import REPO_ROOT, PlatformSettings
from tasks.submit.run import JobFailed, retry_only_unreachable_scheduler, run_job_to_end
from tasks.submit.spec import JobAttempt, JobSpec, JobState

STAGE_RESULT_NAME = "stage_result.json"
STOPPED_STATES = (JobState.CANCELLED, JobState.PREEMPTED, JobState.TIMED_OUT, JobState.NODE_FAIL, JobState.REQUEUED)
"""End states after which the stage can continue from its last checkpoint."""


class StageFailed(RuntimeError):
    """A stage's job ended in a state other than completed; the message says how and why."""


class CachedStageInvalid(StageFailed):
    """A stage's cached result failed verification; it has been set aside for retraining."""


class TrainingParameters(BaseModel):
    """How the three stages (and the embedded default's base-LLM bootstrap) run."""

    preset: StagePresetName = "tiny"
    """Stage preset family (``eve_model.training.config``): ``tiny`` on CPU, ``eve_7b`` = the paper,
    ``eve_7b_hd`` = the paper's HD fine-tune (stage 3 at 1344 px, 4,096 tokens)."""

    backend: Literal["local", "slurm", "k8s"] = "local"
    """Where jobs run."""

    backend_options: dict[str, Any] = Field(default_factory=dict)
    """Constructor options of the backend (e.g. SLURM base dir, Kubernetes namespace)."""

    job: JobSpec = Field(
        default_factory=lambda: JobSpec(
            name="eve", command=["eve_model.train"], workdir=REPO_ROOT, tasks_per_node=2,
            time_limit_minutes=60, log_dir=Path("logs"),
        )
    )
    """Resources and scheduler options of every stage job; ``command`` is filled in per stage."""

    base_llm_dir: str | None = None
    """Stage 1's base LLM (an HF Llama directory such as Vicuna-7B). None: bootstrap the tiny
    decoder from scratch on the caption text (embedded default only)."""

    stage_overrides: dict[StageId, StageOverrides] = Field(default_factory=dict)
    """Per-stage changes to the preset, e.g. ``{"3": {"max_steps": 80}}``."""

    stage_lock_timeout_seconds: float = 48 * 3600
    """How long a run waits for another run training the same stage key (``tasks.locks``) before it
    fails with the holder's identity. Longer than a stage's job normally runs: waiting is cheaper than
    failing, since the wait ends by reusing the other run's result."""

    cache_teacher_features: bool = False
    """Memoise the frozen teacher's features under the platform home (shared with curation and the
    contamination check). Only where the jobs see that directory (local backend, a shared
    filesystem) and the features fit on disk: the embedded default, not 7B pre-training."""

    @property
    def stage_order(self) -> list[StageId]:
        """The stages a retrain runs, in order (the bootstrap only without a base LLM)."""
        stages = list(StageId)
        return stages if self.base_llm_dir is None else stages[1:]


class RunLabels(BaseModel):
    """How one retrain's runs are labelled in W&B: one group per retrain, tagged with its recipe."""

    group: str | None = None
    """W&B group: the retrain's flow run name (e.g. ``retrain-demo-20261203-101500``)."""

    recipe: str | None = None
    """The recipe the parameters came from (``RetrainParameters.recipe``)."""

    def wandb_tags(self, stage: StageId, dataset_hash: str) -> list[str]:
        """Tags of one stage's W&B run: recipe, stage, and the first 12 hex digits of its dataset hash."""
        tags = [f"stage:{stage}", f"dataset:{dataset_hash[:12]}"]
        return ([f"recipe:{self.recipe}"] if self.recipe else []) + tags


class StageResult(BaseModel):
    """What a finished stage hands to the next one and to lineage."""

    stage: StageId
    """Which stage."""

    cache_key: str
    """sha256 of (dataset hash, parent weights hash, stage config hash, code-tree revision)."""

    output_dir: str
    """The stage's folder: checkpoints, logs, metrics.jsonl, and ``final/``."""

    model_dir: str
    """The final HF model directory (``output_dir/final``)."""

    weights_sha256: str
    """``eve_model.identity.weights_sha256`` of the final model directory."""

    dataset_hash: str
    """The dataset the stage trained on."""

    parent_weights_sha256: str | None
    """Weights hash of the init checkpoint; None for a from-scratch bootstrap."""

    config_hash: str
    """``StageConfig.content_hash()``."""

    code_revision: str
    """``eve_model.identity.code_tree_revision`` of the code that trained it."""

    skipped: bool = False
    """True when this result was found in the cache instead of trained by this run."""

    job_ids: list[str] = Field(default_factory=list)
    """Scheduler job ids of every attempt, oldest first (a resubmission adds one; a SLURM requeue
    keeps its id and appears in ``attempts``)."""

    attempts: list[JobAttempt] = Field(default_factory=list)
    """Every run of the stage's job: requeues under the same job id and resubmissions, each with how it ended."""

    backend: str = "local"
    """Backend that ran the job."""

    final_metrics: dict[str, Any] = Field(default_factory=dict)
    """The job's ``final_metrics.json``."""

    wall_seconds: float = 0.0
    """Wall-clock time of this run's job (0 when skipped)."""


class PlannedStage(BaseModel):
    """A stage ready to run: its config placed in the folder of its cache key, and the key's inputs."""

    config: StageConfig
    """The stage config, ``output_dir`` set to the key's folder."""

    cache_key: str
    """``stage_cache_key`` of the inputs below."""

    parent_weights_sha256: str | None
    """Weights hash of the init checkpoint (None for the bootstrap)."""

    code_revision: str
    """Code-tree revision the key was computed with."""

    @property
    def stage(self) -> StageId:
        return self.config.stage

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)


class TrainedStage(BaseModel):
    """One stage of a retrain: how it was planned and what it produced (trained or reused)."""

    planned: PlannedStage
    """Its config and cache key."""

    result: StageResult
    """Its output."""


def stage_cache_key(dataset_hash: str, parent_weights_sha256: str | None, config_hash: str, revision: str) -> str:
    canonical = json.dumps(
        {"dataset": dataset_hash, "parent": parent_weights_sha256, "config": config_hash, "code": revision},
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def stage_output_dir(settings: PlatformSettings, stage: StageId, cache_key: str) -> Path:
    return settings.runs_dir / "stages" / f"stage-{stage}-{cache_key[:16]}"


def place_stage(
    config: StageConfig,
    settings: PlatformSettings,
    parent_weights_sha256: str | None,
    revision: str | None = None,
) -> PlannedStage:
    """Compute the cache key once and set ``output_dir`` to its folder.

    ``output_dir`` is not part of ``content_hash`` (it is a location, not a semantic input), so the
    key can be computed first and the folder named after it.
    """
    if config.dataset_hash is None:
        raise StageFailed(f"stage {config.stage}: the platform always pins the dataset hash")
    revision = revision or code_tree_revision()
    key = stage_cache_key(config.dataset_hash, parent_weights_sha256, config.content_hash(), revision)
    placed = config.model_copy(update={"output_dir": str(stage_output_dir(settings, config.stage, key))})
    return PlannedStage(config=placed, cache_key=key, parent_weights_sha256=parent_weights_sha256, code_revision=revision)


def stage_config_for(
    stage: StageId,
    training: TrainingParameters,
    dataset_location: str,
    dataset_hash: str,
    init_checkpoint: str | None,
    settings: PlatformSettings,
    labels: RunLabels | None = None,
) -> StageConfig:
    """A stage's config from the training parameters' preset and overrides (not yet placed), with the
    retrain's W&B group and tags (outside the content hash)."""
    labels = labels or RunLabels()
    config = preset_stage_config(
        training.preset,
        stage,
        output_dir="(set by place_stage)",
        dataset_location=dataset_location,
        dataset_hash=dataset_hash,
        init_checkpoint=init_checkpoint,
        **overrides_as_kwargs(training.stage_overrides.get(stage)),
    )
    config = config.model_copy(update={"wandb_group": labels.group, "wandb_tags": labels.wandb_tags(stage, dataset_hash)})
    if training.cache_teacher_features and stage != StageId.BASE_LLM and config.teacher_feature_cache_dir is None:
        config = config.model_copy(update={"teacher_feature_cache_dir": str(settings.teacher_feature_cache_dir)})
    return config


@task(name="plan-stage", task_run_name="plan-stage-{stage}")
def plan_stage(
    stage: StageId,
    training: TrainingParameters,
    dataset_location: str,
    dataset_hash: str,
    parent: StageResult | None,
    labels: RunLabels | None = None,
) -> PlannedStage:
    """The stage's config from its preset and overrides, placed in its cache-key folder; ``labels``
    name the retrain's W&B group and recipe."""
    init_checkpoint = parent.model_dir if parent is not None else (
        training.base_llm_dir if stage == StageId.PREALIGN else None
    )
    settings = PlatformSettings.load()
    config = stage_config_for(stage, training, dataset_location, dataset_hash, init_checkpoint, settings, labels)
    parent_weights = parent.weights_sha256 if parent is not None else (
        weights_sha256(init_checkpoint) if init_checkpoint else None
    )
    return place_stage(config, settings, parent_weights)


def find_cached_result(planned: PlannedStage) -> StageResult | None:
    """A finished result in the stage's folder for exactly its key, with verified weights, or None.

    A result whose ``final/`` no longer hashes to the recorded weights hash (edited, truncated) is
    not a hit: ``final/`` is moved aside to ``final.mismatch-<time>`` (kept as evidence) and the
    result file removed, so the job trains it again (resuming from its last step checkpoint).
    """
    result_path = planned.output_dir / STAGE_RESULT_NAME
    if not result_path.exists():
        return None
    result = StageResult.model_validate_json(result_path.read_text())
    if result.cache_key != planned.cache_key:
        return None
    try:
        verify_weights(result.model_dir, result.weights_sha256)
    except (WeightsMismatch, FileNotFoundError) as problem:
        final_dir = Path(result.model_dir)
        if final_dir.exists():
            final_dir.rename(final_dir.with_name(f"{final_dir.name}.mismatch-{int(time.time())}"))
        result_path.unlink()
        raise CachedStageInvalid(f"stage {planned.stage} cache entry {planned.cache_key[:16]}: {problem}") from problem
    return result.model_copy(update={"skipped": True, "wall_seconds": 0.0})


def stage_paths(config: StageConfig, config_path: Path) -> list[str]:
    """The paths a stage's ranks read or write: every node must see them (``JobSpec.shared_paths``)."""
    paths = [str(config_path), config.output_dir, config.dataset_location]
    if config.init_checkpoint:
        paths.append(config.init_checkpoint)
    teacher = config.model_overrides.get("teacher_path")
    if teacher:
        paths.append(str(teacher))
    return paths


def measured_save_seconds(output_dir: Path) -> float | None:
    """The longest step-checkpoint save this stage's earlier attempts measured, or None."""
    timings = Path(output_dir) / SAVE_TIMINGS_PATH
    if not timings.exists():
        return None
    seconds = [json.loads(line)["seconds"] for line in timings.read_text().splitlines() if line.strip()]
    return max(seconds) if seconds else None


def build_job_spec(config_path: Path, planned: PlannedStage, template: JobSpec) -> JobSpec:
    """The job that runs one stage: the training entry point on the stage config, with the
    resources, scheduler options and environment of ``template``. The code revision travels in the
    environment so nodes without the git checkout record the same one. The checkpoint save budget
    (and so the signal lead, torchrun's shutdown timeout and the pod grace period) is raised to
    1.5x the longest save an earlier attempt of this stage measured."""
    save_seconds = template.checkpoint_save_seconds
    measured = measured_save_seconds(planned.output_dir)
    if measured is not None:
        save_seconds = max(save_seconds, math.ceil(1.5 * measured))
    fields = {
        **template.model_dump(),
        "name": f"{template.name}-stage-{planned.stage}",
        "command": job_command(config_path, template.python_executable),
        "log_dir": str(planned.output_dir / "logs"),
        "env": {**template.env, CODE_REVISION_ENV: planned.code_revision},
        "shared_paths": [*template.shared_paths, *stage_paths(planned.config, config_path)],
        "checkpoint_save_seconds": save_seconds,
    }
    return JobSpec.model_validate(fields)


def resume_point(output_dir: Path) -> str:
    """Where a stopped stage continues: its last complete step checkpoint, said in words."""
    tag = CheckpointManager(output_dir, rank=0, keep_last=1).latest_tag()
    if tag is None:
        return "it has no complete checkpoint yet, so it starts again from step 0"
    step = int(tag.split("-")[1])
    return f"it resumes from step {step} ({Path(output_dir) / 'checkpoints' / tag}) when the retrain runs again"


def _record_result(planned: PlannedStage, job_ids: list[str], backend: str, wall_seconds: float,
                   attempts: list[JobAttempt] | None = None) -> StageResult:
    model_dir = planned.output_dir / "final"
    metrics_path = model_dir / "final_metrics.json"
    if not metrics_path.exists():
        raise StageFailed(f"stage {planned.stage} reported success but wrote no {metrics_path}")
    result = StageResult(
        stage=planned.stage,
        cache_key=planned.cache_key,
        output_dir=str(planned.output_dir),
        model_dir=str(model_dir),
        weights_sha256=weights_sha256(model_dir),
        dataset_hash=planned.config.dataset_hash or "",
        parent_weights_sha256=planned.parent_weights_sha256,
        config_hash=planned.config.content_hash(),
        code_revision=planned.code_revision,
        job_ids=job_ids,
        attempts=attempts or [],
        backend=backend,
        final_metrics=json.loads(metrics_path.read_text()),
        wall_seconds=round(wall_seconds, 2),
    )
    tmp = planned.output_dir / f".{STAGE_RESULT_NAME}.tmp"
    tmp.write_text(result.model_dump_json(indent=2))
    tmp.replace(planned.output_dir / STAGE_RESULT_NAME)
    return result


@task(name="cached-stage", task_run_name="cached-stage-{planned.config.stage}")
def cached_stage(planned: PlannedStage) -> StageResult:
    """The cached result of a stage that must not be retrained; fails when there is none."""
    result = find_cached_result(planned)
    if result is None:
        raise StageFailed(
            f"stage {planned.stage} has no cached result for these inputs (key {planned.cache_key[:16]}); "
            "run the full retrain, or start from an earlier stage"
        )
    return result


def run_stage(
    planned: PlannedStage,
    training: TrainingParameters,
    on_log: Callable[[str], None] | None = None,
    poll_seconds: float = 2.0,
    timeout_seconds: float | None = None,
    on_event: Callable[[str], None] | None = None,
) -> StageResult:
    """Reuse the stage's verified cached result, or run its job to the end and record the result.

    The job goes through ``run_job_to_end``, the one submission path (submit, stream the log, wait,
    resubmit resumable ends, map the end state). A cached result that fails verification is set
    aside and trained again. One job per stage key: a run that finds another training the same key
    waits for it (``tasks.locks.work_folder_lock``) and then reuses its result.
    """
    purpose = f"train stage {planned.stage} (key {planned.cache_key[:16]})"
    with work_folder_lock(planned.output_dir, purpose, training.stage_lock_timeout_seconds, on_log):
        return _run_stage_locked(planned, training, on_log, poll_seconds, timeout_seconds, on_event)


def _run_stage_locked(planned: PlannedStage, training: TrainingParameters, on_log: Callable[[str], None] | None,
                      poll_seconds: float, timeout_seconds: float | None,
                      on_event: Callable[[str], None] | None) -> StageResult:
    try:
        cached = find_cached_result(planned)
    except CachedStageInvalid as problem:
        if on_log is not None:
            on_log(f"{problem}; training it again\n")
        cached = None
    if cached is not None:
        return cached
    planned.output_dir.mkdir(parents=True, exist_ok=True)
    config_path = planned.config.write(planned.output_dir / "stage_config.json")
    spec = build_job_spec(config_path, planned, training.job)
    started = time.monotonic()
    try:
        job = run_job_to_end(spec, training.backend, training.backend_options, poll_seconds=poll_seconds,
                             timeout_seconds=timeout_seconds, on_log=on_log, on_event=on_event)
    except JobFailed as failure:
        stopped = failure.status.state in STOPPED_STATES or failure.status.resumable
        where = f"; {resume_point(planned.output_dir)}" if stopped else ""
        raise StageFailed(f"stage {planned.stage}: {failure}{where}") from failure
    return _record_result(planned, list(job.handle.attempt_job_ids or [job.handle.job_id]), training.backend,
                          time.monotonic() - started, attempts=job.handle.attempts)


def plan_dry_run(training: TrainingParameters, home: Path) -> list[tuple[PlannedStage, JobSpec]]:
    """Every stage's config and job as a retrain would submit them, without data or training.

    The datasets and the parent checkpoints do not exist yet, so their hashes are placeholders
    (all zeros) and their locations are where the retrain would put them under ``home``; the job
    definitions (resources, scheduler options, flush timing, environment, paths) are the real ones.
    """
    settings = PlatformSettings(home=home)
    placeholder = "0" * 64
    planned_jobs: list[tuple[PlannedStage, JobSpec]] = []
    parent: PlannedStage | None = None
    for stage in training.stage_order:
        init_checkpoint = (
            str(parent.output_dir / "final") if parent is not None
            else training.base_llm_dir if stage == StageId.PREALIGN else None
        )
        config = stage_config_for(stage, training, str(home / "datasets" / f"stage-{stage}-dataset"), placeholder,
                                  init_checkpoint, settings)
        planned = place_stage(config, settings, parent_weights_sha256=placeholder if init_checkpoint else None,
                              revision=placeholder)
        spec = build_job_spec(planned.output_dir / "stage_config.json", planned, training.job)
        planned_jobs.append((planned, spec))
        parent = planned
    return planned_jobs


def stage_inputs(planned: PlannedStage) -> list:
    """What a stage reads, as OpenLineage datasets: its training data and (after the first) its parent model."""
    config = planned.config
    inputs = [dataset_ref(config.dataset_location, "training data", config.dataset_hash)]
    if config.init_checkpoint and planned.parent_weights_sha256:
        inputs.append(model_ref(config.init_checkpoint, planned.parent_weights_sha256, role="parent"))
    return inputs


def progress_artifact_key(stage: StageId) -> str:
    """Key of a stage's Prefect progress artifact (lowercase letters, digits and dashes)."""
    return f"stage-{stage}-progress"


def _progress_markdown(stage: StageId, report: ProgressReport) -> str:
    loss = f"{report.loss:.4f}" if report.loss is not None else "?"
    rate = f"{report.samples_per_second:.1f}" if report.samples_per_second is not None else "?"
    return (
        f"**Stage {stage}**: step {report.step} of {report.total_steps}, loss {loss}, {rate} samples/s, "
        f"running for {format_duration(report.elapsed_seconds)}, about {format_duration(report.eta_seconds)} to go"
    )


class StageProgressArtifact:
    """A stage's Prefect progress artifact (``progress_artifact_key``): 0 % when the stage starts, each
    progress line of the job moves it on, 100 % at the end. It only reports: a failed update is logged
    once and never fails the stage."""

    def __init__(self, planned: PlannedStage, warn: Callable[[str], None]) -> None:
        self.stage = planned.stage
        self._warn = warn
        self._failed = False
        self.last: ProgressReport | None = None
        self.artifact_id = self._call(lambda: create_progress_artifact(
            0.0, key=progress_artifact_key(self.stage),
            description=f"**Stage {self.stage}**: starting (cache key `{planned.cache_key[:16]}`)",
        ))

    def _call(self, action: Callable[[], Any]) -> Any:
        if self._failed:
            return None
        try:
            return action()
        except Exception as error:  # noqa: BLE001 - progress display must not fail training
            self._failed = True
            self._warn(f"stage {self.stage}: progress artifact not updated any more ({type(error).__name__}: {error})")
            return None

    def update(self, report: ProgressReport) -> None:
        self.last = report
        if self.artifact_id is not None:
            self._call(lambda: update_progress_artifact(
                self.artifact_id, min(100.0, report.percent), description=_progress_markdown(self.stage, report)))

    def finish(self, result: StageResult) -> None:
        how = (f"unchanged, reused from the stage cache ({result.model_dir})" if result.skipped
               else f"trained in {format_duration(result.wall_seconds)} -> `{result.weights_sha256[:16]}`")
        if self.artifact_id is not None:
            self._call(lambda: update_progress_artifact(
                self.artifact_id, 100.0, description=f"**Stage {self.stage}**: done, {how}"))


def stage_log_handler(emit: Callable[[str], None], progress: StageProgressArtifact | None = None) -> Callable[[str], None]:
    """An ``on_log`` for ``run_stage``: each job log line to ``emit`` except chatter
    (``tasks.log_filters.is_job_log_chatter``); progress lines also move ``progress``."""

    def handle(text: str) -> None:
        for line in text.splitlines():
            if not line.strip() or is_job_log_chatter(line):
                continue
            if progress is not None and (report := parse_progress_line(line)) is not None:
                progress.update(report)
            emit(line)

    return handle


@task(
    name="train-stage",
    task_run_name="stage-{planned.config.stage}",
    retries=3,
    retry_delay_seconds=[10, 60, 300],
    retry_condition_fn=retry_only_unreachable_scheduler,
)
def train_stage(planned: PlannedStage, training: TrainingParameters) -> StageResult:
    """``run_stage`` with the job log streamed into the task run's log.

    Retries only when the scheduler could not be reached or refused the submission (no job exists
    then); a job that ran and failed is not resubmitted by Prefect: rerunning the flow resumes it
    from its checkpoint.
    """
    logger = get_run_logger()
    progress = StageProgressArtifact(planned, warn=logger.warning)
    with lineage_run(f"stage-{planned.stage}", stage_inputs(planned)) as written:
        result = run_stage(planned, training, on_log=stage_log_handler(logger.info, progress),
                           on_event=lambda line: logger.info("[scheduler] stage %s: %s", planned.stage, line))
        written.append(model_ref(result.model_dir, result.weights_sha256, stage=str(result.stage),
                                 config_sha256=result.config_hash, cache_hit=result.skipped))
    progress.finish(result)
    if result.skipped:
        logger.info("stage %s unchanged (cache key %s): reusing %s", planned.stage, planned.cache_key[:16], result.model_dir)
    else:
        logger.info("stage %s trained in %.1f s -> %s", planned.stage, result.wall_seconds, result.model_dir)
    return result
