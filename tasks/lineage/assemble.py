"""The retrain's lineage step: build a candidate's manifest from what the earlier steps returned."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task

from eve_model.identity import platform_commit
from tasks.caption.provenance import BackendIdentity
from tasks.data.versioning import DatasetRegistry, DatasetVersion
from tasks.evaluate.gates import EvaluationSummary
from tasks.lineage.schema import (
    CaptionRunRef,
    DatasetRef,
    LineageManifest,
    QualityReportRef,
    StageRecord,
    build_lineage_manifest,
)
from tasks.platform import REPO_ROOT
from tasks.quality.gate import GateResult
from tasks.stages import TrainedStage

_PARENT_ROLES = {
    "ingested": ("raw",),
    "curated": ("ingested",),
    "captioned": ("curated",),
    "filtered": ("captioned",),
    "sft": ("raw",),
    "sft-filtered": ("sft",),
    "sft-mixture": ("sft-filtered", "filtered"),
}
"""Where each dataset role comes from in the pipeline (captions from the ingested set when there is
no curation); the SFT mixture has two parents: the gated instruction data and the gated captions."""


def raw_source_ref(use_demo_source: bool, ingested: DatasetVersion) -> DatasetRef:
    """The raw sources: ``data.dvc``'s md5 for the bundled demo, else the ingested shards."""
    if use_demo_source:
        from tasks.data.demo_source import recorded_data_md5

        md5 = recorded_data_md5(REPO_ROOT / "data.dvc")
        return DatasetRef(role="raw", dataset_hash=md5, location="data/ (data.dvc)", dvc_md5=md5)
    return DatasetRef(role="raw", dataset_hash=ingested.dataset_hash, location=ingested.remote_url,
                      dvc_md5=ingested.dvc_md5)


def _stage_record(trained: TrainedStage) -> StageRecord:
    config, result = trained.planned.config, trained.result
    deepspeed_path = Path(result.model_dir) / "deepspeed_config.json"
    wandb_run_id = result.final_metrics.get("wandb_run_id")
    return StageRecord(
        name=f"stage-{config.stage}",
        config=config.to_json_dict(),
        config_sha256=config.content_hash(),
        deepspeed_config=json.loads(deepspeed_path.read_text()) if deepspeed_path.exists() else {},
        input_dataset_hash=result.dataset_hash,
        parent_weights_sha256=result.parent_weights_sha256,
        weights_sha256=result.weights_sha256,
        model_dir=result.model_dir,
        scheduler=result.backend,
        job_ids=result.job_ids,
        wandb_run_ids=[str(wandb_run_id)] if wandb_run_id else [],
        cache_hit=result.skipped,
    )


@task(name="assemble-lineage")
def assemble_lineage(
    raw: DatasetRef,
    versions: dict[str, DatasetVersion],
    caption_identity: BackendIdentity,
    caption_gate: GateResult,
    stages: list[TrainedStage],
    evaluation: EvaluationSummary,
) -> LineageManifest:
    """The lineage manifest of the candidate: raw source -> datasets -> stages -> evaluation.

    ``versions`` maps roles (ingested, curated, captioned, filtered, sft, sft-filtered, sft-mixture) to
    the registered dataset versions; ``derived_from`` follows the pipeline's order (two parents for the
    SFT mixture).
    """
    registry = DatasetRegistry.from_settings()
    hashes = {"raw": raw.dataset_hash, **{role: version.dataset_hash for role, version in versions.items()}}
    datasets = []
    for role, version in versions.items():
        parent_roles = ["ingested" if parent == "curated" and parent not in hashes else parent
                        for parent in _PARENT_ROLES[role]]
        datasets.append(DatasetRef(
            role=role, dataset_hash=version.dataset_hash, location=str(registry.root / version.path_in_repo),
            num_items=version.num_items, derived_from=[hashes[parent] for parent in parent_roles], dvc_md5=version.dvc_md5,
        ))
    return build_lineage_manifest(
        code_revision=platform_commit(),
        raw_sources=[raw],
        datasets=datasets,
        caption=CaptionRunRef(identity=caption_identity, output_dataset_hash=versions["captioned"].dataset_hash),
        quality=QualityReportRef(
            suite_name=caption_gate.suite_name, suite_version=caption_gate.suite_version,
            dataset_hash=caption_gate.input_dataset_hash, success=caption_gate.passed,
            statistics={"counts": caption_gate.counts.model_dump(), "summary": caption_gate.summary},
            thresholds=caption_gate.thresholds,
        ),
        stages=[_stage_record(trained) for trained in stages],
        evaluation=evaluation,
    )


__all__ = ["assemble_lineage", "raw_source_ref"]
