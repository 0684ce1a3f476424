"""What a retrain would do, without doing it: ``eve retrain --dry-run`` prints this plan.

The plan follows the retrain's own steps (``flows/retrain_flow.py``) and asks each one's cache whether
its result already exists, reading only manifests and result files:

    sources -> ingest (staging, by source fingerprint + rules) -> curation (staging, by input hash +
    rules) -> captions, caption gate (by input hash + config) -> stage 1, 2, 3 (stage cache keys)

A stage is ``reuse`` only when every input of its cache key is known now (the dataset it trains on
already exists and its parent stage is reused) and a verified result of that key exists; otherwise
it is ``train``. Sources are checked for existence and their layout is recognised (the same check
the ingest starts with), so a wrong path or an unrecognised folder shows up here, in seconds.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from eve_model.shards import DatasetIntegrityError, verify_dataset
from eve_model.training.config import StageId
from flows.parameters import RetrainParameters
from tasks.data.curate import curation_key
from tasks.data.curate import rules_in_force as curation_rules
from tasks.data.sft_mixture import mixture_input_key
from tasks.data.sharding import REPORT_FILE, IngestReport
from tasks.data.sources import SourceError, SourceSpec
from tasks.data.steps import derived_dataset_dir, ingest_cache_key, staging_dir
from tasks.data.versioning import DatasetNotFoundError, DatasetRegistry
from tasks.platform import PlatformSettings
from tasks.stages import CachedStageInvalid, StageResult, find_cached_result, plan_dry_run, plan_stage


class StagePlan(BaseModel):
    """One stage: train or reuse, and the resources of its job."""

    stage: StageId
    action: str
    """``train`` or ``reuse <cache key[:16]>``."""
    max_steps: int | None
    num_epochs: float | None
    global_batch_size_samples: int
    ranks: int
    nodes: int
    gpus_per_node: int


class RetrainPlan(BaseModel):
    """The datasets a retrain reads, which stages it trains or reuses, where and with what."""

    data: list[str]
    """One line per dataset input and per rule set."""
    stages: list[StagePlan]
    backend: str
    resources: list[str]
    """The job's resources and scheduler options, one per line."""
    problems: list[str]
    """What would fail now (a source that is not there, a registered version that is not found)."""

    def lines(self) -> list[str]:
        out = ["data:", *(f"  {line}" for line in self.data), f"training ({self.backend}):"]
        for stage in self.stages:
            gpus = f"{stage.gpus_per_node} GPU(s)/node" if stage.gpus_per_node else "CPU"
            length = f"{stage.max_steps} steps" if stage.max_steps else f"{stage.num_epochs:g} epoch(s)"
            out.append(f"  stage {stage.stage:<8} {stage.action:<24} {length} x {stage.global_batch_size_samples} "
                       f"samples, {stage.ranks} rank(s) on {stage.nodes} node(s), {gpus}")
        out += ["resources:", *(f"  {line}" for line in self.resources)]
        out += [f"problem: {problem}" for problem in self.problems]
        return out


def _ingested_hash(sources: list[SourceSpec], params: RetrainParameters, sft: bool) -> str | None:
    """The dataset hash of an identical earlier ingest still in staging, else None."""
    validation = params.data.sft_validation if sft else params.data.validation
    try:
        directory = staging_dir("ingest", ingest_cache_key(sources, validation, params.data.max_items_per_shard))
    except (SourceError, OSError):
        return None
    report_path = directory / REPORT_FILE
    if not report_path.exists():
        return None
    return IngestReport.model_validate_json(report_path.read_text()).dataset_hash


def _existing_hash(directory: Path) -> str | None:
    try:
        return verify_dataset(directory, check_shards=False).dataset_hash
    except (DatasetIntegrityError, FileNotFoundError, OSError, ValueError):
        return None


def _describe_sources(label: str, sources: list[SourceSpec], problems: list[str]) -> list[str]:
    lines = []
    for source in sources:
        try:
            lines.append(f"{label}: {source.resolved().describe()}")
        except SourceError as error:
            lines.append(f"{label}: {source.location}: NOT READABLE")
            problems.append(str(error))
    return lines


def _registered(label: str, key: str, problems: list[str]) -> tuple[list[str], str | None]:
    try:
        version = DatasetRegistry.from_settings().find(key)
    except DatasetNotFoundError as error:
        problems.append(str(error))
        return [f"{label}: registered version {key}: NOT FOUND"], None
    return [f"{label}: registered version {version.tag} ({version.num_items} items, dataset_hash {version.dataset_hash[:16]})"], \
        version.dataset_hash


def plan_retrain(params: RetrainParameters) -> RetrainPlan:
    """The plan of a retrain with ``params`` in the platform home (nothing is run or written)."""
    data, problems = params.data, []
    settings = PlatformSettings.load()
    lines: list[str] = []

    if data.use_demo_source:
        lines.append("captions and conversations: the bundled demo source (data/, checked against data.dvc)")
        raw_hash = sft_hash = None
    else:
        if data.dataset:
            found, raw_hash = _registered("captions", data.dataset, problems)
            lines += found
        else:
            lines += _describe_sources("captions", data.sources, problems)
            raw_hash = _ingested_hash(data.sources, params, sft=False)
        sft_hash = None
        if data.sft_dataset:
            found, sft_hash = _registered("conversations", data.sft_dataset, problems)
            lines += found
        elif data.sft_sources:
            lines += _describe_sources("conversations", data.sft_sources, problems)
            sft_hash = _ingested_hash(data.sft_sources, params, sft=True)
    lines.append("validation: " + "; ".join(data.validation.rules_in_force()))
    curation = data.curation
    sampling = (f"diversity sampling: {curation.num_clusters or 'derived'} clusters x {curation.keep_per_cluster or 'derived'}"
                if curation.num_clusters or curation.keep_per_cluster else
                f"diversity sampling: target {curation.target_num_items:,} images" if curation.target_num_items else
                "every filtered image kept" if curation.target_fraction >= 1 else
                f"diversity sampling: target {curation.target_fraction:g} of the filtered images")
    lines.append("curation: " + ("off" if not data.curate else
                                 "; ".join([*curation_rules(curation, None, curation.embedder)[:2], sampling])))
    captions = params.captions
    lines.append(f"captions: backend {captions.backend}" + (f" (field {captions.source_field!r})" if captions.backend == "source"
                                                            else f" (model {captions.model} at {captions.endpoint_url or 'local'})"))
    lines.append(f"caption gate: profile {params.caption_quality.profile}; evaluation questions: "
                 f"{params.evaluation.eval_questions_path or 'the demo held-out set'}; evaluation gate: "
                 f"{len(params.evaluation.gate.thresholds)} minimum(s), {len(params.evaluation.gate.non_regression)} "
                 "non-regression rule(s)")
    gate = params.evaluation.gate
    if not (gate.thresholds or gate.non_regression or gate.retention):
        lines.append("warning: the evaluation gate has no rule: every uncontaminated candidate passes it "
                     "(set evaluation.gate, e.g. --gate-minimum demo_vqa/accuracy=0.3)")
    lines += [f"missing: {line}" for line in params.missing_for_training()]
    problems += params.missing_for_training()

    filtered_hash = _filtered_hash(params, raw_hash, settings) if raw_hash else None
    sft_filtered_hash = (
        _existing_hash(Path(derived_dataset_dir.fn("sft-filtered", sft_hash, params.instruction_quality)))
        if sft_hash else None
    )
    # Stage 3 trains on the SFT mixture of the gated conversations and the gated captions (data_only).
    sft_mixture_hash = (
        _existing_hash(Path(derived_dataset_dir.fn(
            "sft-mixture", mixture_input_key(sft_filtered_hash, filtered_hash), params.sft_mixture)))
        if sft_filtered_hash and filtered_hash else None
    )
    stages = _stage_plans(params, settings, filtered_hash, sft_mixture_hash)
    job = params.training.job
    resources = [
        f"{job.nodes} node(s) x {job.gpus_per_node} GPU(s){' ' + job.gpu_type if job.gpu_type else ''}, "
        f"{job.ranks_per_node} rank(s) per node, {job.cpus_per_task} CPU(s) per rank, "
        f"{job.memory_gb or 'default'} GiB per node, time limit {job.time_limit_minutes or 'none'} min",
    ]
    scheduler = {k: v for k, v in (("partition", job.partition), ("account", job.account), ("qos", job.qos),
                                   ("constraint", job.constraint), ("image", job.container_image),
                                   ("environment", job.runtime_environment)) if v}
    if scheduler:
        resources.append(", ".join(f"{key} {value}" for key, value in scheduler.items()))
    options = {key: value for key, value in params.training.backend_options.items()
               if isinstance(value, (str, int, float)) and not isinstance(value, bool)}
    if options:
        resources.append("backend options: " + ", ".join(f"{key} {value}" for key, value in sorted(options.items())))
    resources.append(f"base LLM: {params.training.base_llm_dir or 'bootstrapped from scratch (tiny preset)'}; "
                     f"preset {params.training.preset}")
    return RetrainPlan(data=lines, stages=stages, backend=params.training.backend, resources=resources, problems=problems)


def _filtered_hash(params: RetrainParameters, raw_hash: str, settings: PlatformSettings) -> str | None:
    """The caption-gated dataset an earlier identical run produced from ``raw_hash``, if it is still there."""
    curated_hash = raw_hash
    if params.data.curate:
        curated = settings.path("staging") / f"curate-{curation_key(raw_hash, params.data.curation)[:24]}"
        curated_hash = _existing_hash(curated)
        if curated_hash is None:
            return None
    captioned = _existing_hash(Path(derived_dataset_dir.fn("captioned", curated_hash, params.captions)))
    if captioned is None:
        return None
    return _existing_hash(Path(derived_dataset_dir.fn("filtered", captioned, params.caption_quality)))


def _stage_plans(
    params: RetrainParameters, settings: PlatformSettings, filtered_hash: str | None, sft_hash: str | None
) -> list[StagePlan]:
    plans, parent = [], None
    for planned, spec in plan_dry_run(params.training, settings.home):
        stage = planned.stage
        dataset_hash = sft_hash if stage == StageId.SFT else filtered_hash
        cached: StageResult | None = None
        if dataset_hash is not None and (parent is not None or stage in (StageId.BASE_LLM, StageId.PREALIGN)):
            dataset_dir = str(settings.path("datasets", "planned"))
            try:  # the key needs the parent's weights hash: the base LLM's is read from its files
                cached = find_cached_result(plan_stage.fn(stage, params.training, dataset_dir, dataset_hash, parent))
            except (CachedStageInvalid, OSError):
                cached = None
        parent = cached
        plans.append(StagePlan(
            stage=stage, action=f"reuse {cached.cache_key[:16]}" if cached else "train",
            max_steps=planned.config.max_steps, num_epochs=planned.config.num_epochs, global_batch_size_samples=planned.config.global_batch_size_samples,
            ranks=spec.world_size, nodes=spec.nodes, gpus_per_node=spec.gpus_per_node,
        ))
    return plans


__all__ = ["RetrainPlan", "StagePlan", "plan_retrain"]
