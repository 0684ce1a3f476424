"""The end-to-end EVE retrain (docs/architecture.md, "The retrain"):

    data -> captions -> caption quality gate -> stage 1 -> stage 2 -> stage 3
         -> evaluation gate -> registration -> promotion (reviewer approval)

Every stage is cached by the content hash of its inputs (dataset, parent weights, stage config,
code revision): an unchanged retrain trains nothing, and a retrain that failed in stage 3 resumes at
stage 3 (from its last DeepSpeed checkpoint). A failure anywhere raises, so nothing is registered or
promoted and the reason is the flow run's state message.

Each part is a subflow that shows in the Prefect UI: ``data_only`` (data, captions, both quality
gates), ``train_stages``, ``evaluate_candidate`` and ``register_and_request_promotion``. Also here:
``train_from_stage``. Parameter sets are recipes (``flows/recipes.py``).

Runs are named from what they do: ``retrain-<recipe>-<UTC time>`` (and ``data-...``, ``train-stages-...``
for the parts); that name is also the W&B group of every stage and of the evaluation. The retrain links
to the promotion it started (artifact ``promotion-run``), the promotion back to the retrain.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow
from prefect.context import FlowRunContext
from prefect.runtime import flow_run
from pydantic import BaseModel

from eve_model.training.config import StageId
from flows.data_flow import DataFlowResult, data_pipeline
from flows.parameters import RetrainParameters
from flows.promotion_flow import promote_eve
from flows.recipes import demo, resolve_retrain_parameters
from tasks.caption.prefect_tasks import generate_captions
from tasks.caption.provenance import BackendIdentity
from tasks.data.sft_mixture import mixture_input_key
from tasks.data.steps import dataset_location_task, derived_dataset_dir, mix_sft_dataset_task, register_dataset_version
from tasks.data.versioning import DatasetVersion
from tasks.evaluate.gates import EvaluationSummary, GateDecision
from tasks.evaluate.contamination import ContaminationReport
from tasks.evaluate.prefect_tasks import (
    answer_baselines_task,
    answer_suites,
    check_contamination_task,
    evaluate_model_task,
    evaluation_gate_task,
    evaluation_suites,
    review_samples_task,
    track_evaluation_task,
)
from tasks.evaluate.report import EvaluationReport
from tasks.evaluate.tracking import TrackedDataset, WandbTarget
from tasks.lineage.assemble import assemble_lineage, raw_source_refs
from tasks.log_filters import quiet_library_chatter
from tasks.promotion import (
    ContaminationSummary,
    EvidenceInputs,
    PromotionRequest,
    SampleGeneration,
    link_promotion_run,
    production_evidence,
    start_promotion,
)
from tasks.quality.gate import GateResult
from tasks.quality.prefect_tasks import gate_captions, gate_instruction_data
from tasks.registry import checkout_production, register_candidate
from tasks.registry_card import ModelCardFacts, contamination_sentence
from tasks.stages import RunLabels, StageResult, TrainedStage, cached_stage, plan_stage, train_stage


def _named(kind: str) -> Callable[[], str]:
    """A flow run name from the run's parameters: ``<kind>-<recipe>[-from-stage-<id>]-<UTC time>``."""

    def name() -> str:
        context = FlowRunContext.get()
        parameters = context.parameters if context is not None else {}
        params = parameters.get("params")
        recipe = getattr(params, "recipe_name", None) or (params or {}).get("recipe_name") or "custom"
        if parameters.get("config"):  # a recipe name or a configuration file replaces params
            recipe = Path(str(parameters["config"])).stem
        first = parameters.get("first_stage")
        from_stage = f"-from-stage-{first}" if kind == "retrain" and first is not None else ""
        return f"{kind}-{recipe}{from_stage}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"

    return name


class PreparedData(BaseModel):
    """Gated datasets ready for training, with everything lineage needs."""

    data: DataFlowResult
    """The data pipeline's result (ingest, curation, registered versions)."""

    caption_identity: BackendIdentity
    """The caption run's backend identity."""

    versions: dict[str, DatasetVersion]
    """Registered versions by role: ingested, curated, captioned, filtered, sft, sft-filtered, sft-mixture."""

    caption_gate: GateResult
    """The caption gate's result (stages 1-2 data)."""

    instruction_gate: GateResult | None = None
    """The instruction gate's result (stage 3 data), when there is instruction data."""

    pretrain_location: str
    """Local directory of the filtered caption dataset."""

    sft_location: str | None = None
    """Local directory of stage 3's training set (the SFT mixture)."""

    @property
    def sft_version(self) -> DatasetVersion:
        """Stage 3's training set: the mixture of instruction, caption and text-only conversations."""
        return self.versions["sft-mixture"]

    def training_datasets(self) -> list[TrackedDataset]:
        """The datasets the stages train on (stages 1-2, stage 3), by location and hash."""
        datasets = [TrackedDataset(role="filtered", location=self.pretrain_location,
                                   dataset_hash=self.versions["filtered"].dataset_hash)]
        if self.sft_location and "sft-mixture" in self.versions:
            datasets.append(TrackedDataset(role="sft-mixture", location=self.sft_location,
                                           dataset_hash=self.sft_version.dataset_hash))
        return datasets


class CandidateEvaluation(BaseModel):
    """The candidate's evaluation next to production's and the references a reviewer reads it against,
    the gate's verdict, and the summary lineage keeps."""

    report: EvaluationReport
    production: EvaluationReport | None = None
    production_version: str | None = None
    gate: GateDecision
    summary: EvaluationSummary
    contamination: ContaminationReport | None = None
    """Evaluation images and references against the training data."""
    before_sft: EvaluationReport | None = None
    """The model before SFT (its parent stage) on the VQA suites."""
    baselines: dict[str, dict[str, float]] = {}
    """Metric -> {uniform chance, most common answer}."""
    samples: list[dict] = []
    """Sample answers with their images (``tasks.evaluate.review_samples``)."""


class RetrainResult(BaseModel):
    candidate_version: str | None
    stages: list[StageResult]
    evaluation: EvaluationSummary
    promotion: str
    """How the promotion was handed over: the subflow's outcome, the promotion flow run's id, or "skipped"."""
    run_name: str | None = None
    """The retrain's flow run name (also its W&B group)."""
    before_sft_metrics: dict[str, float] = {}
    """The model before SFT on the VQA suites."""
    baselines: dict[str, dict[str, float]] = {}
    """Metric -> {uniform chance, most common answer}."""


@flow(name="eve-data-only", flow_run_name=_named("data"), log_prints=True)
def data_only(params: RetrainParameters = demo(), config: str | None = None, dataset: str | None = None) -> PreparedData:
    """Data pipeline, teacher captions, caption gate, instruction gate, SFT mixture; every version
    DVC-registered.

    Args:
        params: the parameters (the demo's unless given); replaced by ``config`` when that is set.
        config: a recipe name or a configuration file (``flows.recipes.named_config``); deployments name one.
        dataset: a registered raw version (tag, hash or prefix) to use instead of the sources.
    """
    quiet_library_chatter()
    params = resolve_retrain_parameters(params, config, dataset, training=False)
    data = data_pipeline(params.data, registered_by="retrain")
    name = params.data.dataset_name
    captioned = generate_captions(
        dataset_location_task(data.caption_version),
        derived_dataset_dir("captioned", data.caption_version.dataset_hash, params.captions),
        params.captions,
    )
    captioned_version = register_dataset_version(captioned.output_location, f"{name}-captioned")
    caption_gate = gate_captions(
        captioned.output_location,
        derived_dataset_dir("filtered", captioned.output_dataset_hash, params.caption_quality),
        params.caption_quality,
    )
    filtered_version = register_dataset_version(caption_gate.output_location, f"{name}-filtered")
    versions = {"ingested": data.raw_version, "captioned": captioned_version, "filtered": filtered_version}
    if data.curation is not None:
        versions["curated"] = data.caption_version
    instruction_gate = sft_location = None
    if data.sft_version is not None:
        instruction_gate = gate_instruction_data(
            dataset_location_task(data.sft_version),
            derived_dataset_dir("sft-filtered", data.sft_version.dataset_hash, params.instruction_quality),
            params.instruction_quality,
        )
        versions["sft"] = data.sft_version
        versions["sft-filtered"] = register_dataset_version(instruction_gate.output_location, f"{name}-sft-filtered")
        # Stage 3 trains on the instruction conversations mixed with caption conversations and text-only turns
        # from the gated captions (LLaVA's SFT recipe): one version, two parents.
        mixture = mix_sft_dataset_task(
            dataset_location_task(versions["sft-filtered"]), dataset_location_task(filtered_version),
            derived_dataset_dir("sft-mixture", mixture_input_key(versions["sft-filtered"].dataset_hash,
                                                                 filtered_version.dataset_hash), params.sft_mixture),
            params.sft_mixture,
        )
        versions["sft-mixture"] = register_dataset_version(mixture.dataset_dir, f"{name}-sft-mixture", mixture.dataset_hash)
        sft_location = dataset_location_task(versions["sft-mixture"])
    return PreparedData(
        data=data, caption_identity=captioned.identity, versions=versions, caption_gate=caption_gate,
        instruction_gate=instruction_gate, pretrain_location=dataset_location_task(filtered_version),
        sft_location=sft_location,
    )


@flow(name="eve-train-stages", flow_run_name=_named("train-stages"), log_prints=True)
def train_stages(
    params: RetrainParameters, prepared: PreparedData, first_stage: StageId | None = None, labels: RunLabels | None = None
) -> list[TrainedStage]:
    """The stages in order, each from its parent's output. Stages before ``first_stage`` must come
    from the stage cache: they are looked up, never trained. ``labels``: the retrain's W&B group and recipe."""
    order = params.training.stage_order
    must_be_cached = order[: order.index(first_stage)] if first_stage else []
    parent: StageResult | None = None
    trained = []
    for stage in order:
        sft = stage == StageId.SFT
        version = prepared.sft_version if sft else prepared.versions["filtered"]
        location = prepared.sft_location if sft else prepared.pretrain_location
        planned = plan_stage(stage, params.training, location, version.dataset_hash, parent, labels)
        parent = cached_stage(planned) if stage in must_be_cached else train_stage(planned, params.training)
        trained.append(TrainedStage(planned=planned, result=parent))
    return trained


@flow(name="eve-evaluate-candidate", flow_run_name=_named("evaluate"), log_prints=True)
def evaluate_candidate(
    params: RetrainParameters,
    prepared: PreparedData,
    candidate: StageResult,
    before_sft: StageResult | None = None,
    tracking: WandbTarget | None = None,
) -> CandidateEvaluation:
    """Held-out suites on the candidate, on production and (VQA only) on the model before SFT; answer
    baselines; contamination check; evaluation gate; sample answers for the reviewer; the evaluation
    recorded in W&B (``tracking``)."""
    suites = evaluation_suites(params.evaluation.eval_questions_path or prepared.data.eval_questions_path)
    production_version, production_dir = checkout_production()
    production = evaluate_model_task(production_dir, suites, params.evaluation.harness) if production_dir else None
    report = evaluate_model_task(candidate.model_dir, suites, params.evaluation.harness, production=production)
    before = evaluate_model_task(before_sft.model_dir, answer_suites(suites), params.evaluation.harness) if before_sft else None
    contamination = check_contamination_task(
        suites, [prepared.pretrain_location] + ([prepared.sft_location] if prepared.sft_location else []),
        near_duplicate_threshold=params.evaluation.near_duplicate_threshold,
        cache_teacher_features=params.training.cache_teacher_features,
    )
    gate = evaluation_gate_task(report, params.evaluation.gate, production, contamination)
    samples = review_samples_task(report, production, suites)
    track_evaluation_task(report, production, gate, samples, prepared.training_datasets(), tracking or WandbTarget())
    return CandidateEvaluation(
        report=report, production=production, production_version=production_version, gate=gate,
        summary=EvaluationSummary(metrics=report.flat_metrics(), weights_sha256=report.weights_sha256, gate=gate),
        contamination=contamination, before_sft=before, baselines=answer_baselines_task(suites), samples=samples,
    )


def ingested_now(params: RetrainParameters, data: DataFlowResult) -> dict[str, tuple[list, str]]:
    """Role -> (source specs, source content hash) of what this retrain ingested itself (lineage's raw
    sources); a role taken from a registered version is absent."""
    ingested = {}
    if data.ingest is not None:
        ingested["ingested"] = (params.data.sources, data.ingest.source_content_sha256)
    if data.sft_ingest is not None:
        ingested["sft"] = (params.data.sft_sources, data.sft_ingest.source_content_sha256)
    return ingested


@flow(name="eve-register-and-request-promotion", flow_run_name=_named("register"), log_prints=True)
def register_and_request_promotion(
    params: RetrainParameters, prepared: PreparedData, trained: list[TrainedStage], evaluation: CandidateEvaluation,
    labels: RunLabels | None = None,
) -> tuple[str, str, str | None]:
    """Lineage manifest, registration (gate passed) with the version's model card, and the promotion
    request with the whole evidence (``labels``: the retrain's run name, for the card);
    (version, hand-over, the promotion's flow run id or None when skipped)."""
    lineage = assemble_lineage(
        raw_source_refs(params.data.use_demo_source, prepared.versions, ingested_now(params, prepared.data)),
        prepared.versions,
        prepared.caption_identity, prepared.caption_gate, trained, evaluation.summary,
        instruction_gate=prepared.instruction_gate,
    )
    card_facts = ModelCardFacts(
        recipe_name=params.recipe_name, run_name=labels.group if labels else None,
        production_version=evaluation.production_version,
        production_metrics=evaluation.production.flat_metrics() if evaluation.production else {},
        before_sft_metrics=evaluation.before_sft.flat_metrics() if evaluation.before_sft else {},
        baselines=evaluation.baselines,
        contamination=contamination_sentence(evaluation.contamination) if evaluation.contamination else None,
    )
    version = register_candidate(trained[-1].result.model_dir, lineage, evaluation.gate, card_facts)
    production = production_evidence(evaluation.production_version)
    evidence = EvidenceInputs(
        candidate_metrics=evaluation.report.flat_metrics(),
        production_version=evaluation.production_version,
        production_metrics=evaluation.production.flat_metrics() if evaluation.production else {},
        lower_is_better=evaluation.report.lower_is_better(),
        gate=evaluation.gate,
        baselines=evaluation.baselines,
        before_sft_metrics=evaluation.before_sft.flat_metrics() if evaluation.before_sft else {},
        production_approval=production.approval,
        contamination=ContaminationSummary.from_report(evaluation.contamination) if evaluation.contamination else None,
        caption_quality={k: v for k, v in prepared.caption_gate.summary.items() if isinstance(v, (int, float))},
        caption_dataset_hash=prepared.versions["filtered"].dataset_hash,
        previous_caption_quality=production.caption_quality,
        previous_caption_dataset_hash=production.caption_dataset_hash,
        sample_generations=[SampleGeneration(**row) for row in evaluation.samples],
    )
    request = PromotionRequest(candidate_version=version, evidence=evidence)
    if params.promotion.mode == "wait":
        state = promote_eve(request, return_state=True)
        return version, state.result().status, str(state.state_details.flow_run_id)
    if params.promotion.mode == "detached":
        promotion_run_id = start_promotion(request)
        return version, promotion_run_id, promotion_run_id
    return version, "skipped", None


def _retrain(params: RetrainParameters, first_stage: StageId | None) -> RetrainResult:
    quiet_library_chatter()
    labels = RunLabels(group=flow_run.name, recipe=params.recipe_name)
    prepared = data_only(params)
    trained = train_stages(params, prepared, first_stage=first_stage, labels=labels)
    final = trained[-1].planned.config
    evaluation = evaluate_candidate(
        params, prepared, trained[-1].result, before_sft=trained[-2].result if len(trained) > 1 else None,
        tracking=WandbTarget(mode=final.wandb_mode, project=final.wandb_project, group=labels.group,
                             tags=[f"recipe:{params.recipe_name}"]),
    )
    version, handover, promotion_run_id = register_and_request_promotion(params, prepared, trained, evaluation, labels)
    if promotion_run_id is not None:
        link_promotion_run(promotion_run_id, version)  # on the retrain's own page
    return RetrainResult(
        candidate_version=version, stages=[t.result for t in trained], evaluation=evaluation.summary,
        promotion=handover, run_name=labels.group, baselines=evaluation.baselines,
        before_sft_metrics=evaluation.before_sft.flat_metrics() if evaluation.before_sft else {},
    )


@flow(name="eve-retrain", flow_run_name=_named("retrain"), log_prints=True)
def retrain(params: RetrainParameters = demo(), config: str | None = None, dataset: str | None = None) -> RetrainResult:
    """Data -> captions -> quality gates -> stages 1-3 -> evaluation gate -> registration -> promotion.

    Args:
        params: the parameters (the demo's unless given); replaced by ``config`` when that is set.
        config: a recipe name or a configuration file (``flows.recipes.named_config``); deployments name one.
        dataset: a registered raw version (tag, hash or prefix) to train on instead of the sources; the
            retrain-on-new-data deployment passes the version that arrived.
    """
    return _retrain(resolve_retrain_parameters(params, config, dataset), first_stage=None)


@flow(name="eve-train-from-stage", flow_run_name=_named("retrain"), log_prints=True)
def train_from_stage(
    params: RetrainParameters = demo(), first_stage: StageId = StageId.SFT, config: str | None = None,
    dataset: str | None = None,
) -> RetrainResult:
    """Retrain from ``first_stage`` on; earlier stages come from the stage cache (they must have run
    with the same inputs before), so e.g. a new SFT mixture retrains stage 3 only; a missing one
    fails instead of silently retraining. ``config`` and ``dataset`` as in ``retrain``."""
    return _retrain(resolve_retrain_parameters(params, config, dataset), first_stage=first_stage)
