"""The lineage manifest's schema (docs/architecture.md, "Lineage"): every input and output of one
model version by content hash, and the checks that its chain links hold."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from tasks.caption.provenance import BackendIdentity
from tasks.evaluate.gates import EvaluationSummary

SCHEMA_VERSION = "eve-lineage/2"
"""v2: identities from ``eve_model.identity`` (``weights_sha256`` everywhere) and the caption run's
``BackendIdentity`` as recorded by the caption step."""


def sha256_of_config(config: dict[str, Any]) -> str:
    """Content hash of a config: sha256 of its canonical JSON (sorted keys, no whitespace)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class DatasetRef(BaseModel):
    """One dataset version (an eve-wds/1 directory) that a run read or wrote."""

    role: str
    """Where it sits in the chain: ``raw``, ``ingested``, ``curated``, ``captioned``, ``filtered`` or ``eval``."""

    dataset_hash: str
    """``DatasetManifest.dataset_hash`` (sha256 over the canonical shard list)."""

    location: str
    """Directory or ``s3://`` URL holding manifest.json and shards/, verifiable with ``verify_dataset``."""

    num_items: int | None = None
    """Samples in the version."""

    derived_from: list[str] = Field(default_factory=list)
    """Hashes of the dataset versions this one was made from (empty for raw sources)."""

    dvc_md5: str | None = None
    """DVC's md5 of the directory when it is DVC-tracked, for ``dvc pull`` by hash."""


class CaptionRunRef(BaseModel):
    """The teacher run that wrote the captions of the captioned dataset."""

    identity: BackendIdentity
    """What determined the captions: backend, model and weights hash, prompt, decoding (and the
    endpoint it was reached at, without credentials)."""

    output_dataset_hash: str | None = None
    """Hash of the dataset the run wrote."""


class QualityReportRef(BaseModel):
    """The great-expectations caption-quality result that let the data through."""

    suite_name: str
    """Expectation suite name."""

    suite_version: str
    """Version of the suite definition (its content hash or a semantic version)."""

    dataset_hash: str
    """Dataset the suite ran on."""

    success: bool
    """Overall GX result."""

    statistics: dict[str, Any] = Field(default_factory=dict)
    """GX statistics (evaluated, successful, success percent) and caption metrics."""

    thresholds: dict[str, Any] | None = None
    """Every threshold in force (``GateResult.thresholds``), so ``eve reproduce`` can re-run the gate;
    None in manifests written before they were recorded."""


class StageRecord(BaseModel):
    """One DeepSpeed training stage (prealign, pretrain, sft)."""

    name: str
    """Stage name in run order."""

    config: dict[str, Any] = Field(default_factory=dict)
    """Resolved stage config."""

    config_sha256: str = ""
    """Hash of ``config`` (filled in by ``build_lineage_manifest`` when empty)."""

    deepspeed_config: dict[str, Any] = Field(default_factory=dict)
    """The ds_config the job ran with."""

    deepspeed_config_sha256: str = ""
    """Hash of ``deepspeed_config``."""

    input_dataset_hash: str
    """Dataset the stage trained on."""

    parent_weights_sha256: str | None = None
    """Weights hash of the checkpoint the stage started from (None for the first stage)."""

    weights_sha256: str
    """``eve_model.identity.weights_sha256`` of the stage's final HF checkpoint."""

    model_dir: str | None = None
    """Where that checkpoint lives (path or URL)."""

    scheduler: str = "local"
    """``local``, ``slurm`` or ``kubernetes``."""

    job_ids: list[str] = Field(default_factory=list)
    """Scheduler job ids, every attempt included."""

    wandb_run_ids: list[str] = Field(default_factory=list)
    """W&B run ids."""

    cache_hit: bool = False
    """True when the stage was skipped because its cache key matched an earlier run."""


class WeightsRef(BaseModel):
    """The registered weights of the version."""

    path: str
    """Path inside the registry repository (DVC-tracked)."""

    sha256: str
    """``eve_model.identity.weights_sha256`` of the registered directory."""

    dvc_md5: str
    """DVC's ``.dir`` md5 of the weights in the remote."""


class ApprovalRecord(BaseModel):
    """A reviewer's decision that the platform's policy accepted."""

    version: str
    """Model version the decision is about."""

    decision: Literal["approve", "reject"]
    """Outcome."""

    reviewer: str
    """Who decided."""

    comment: str
    """Why (required)."""

    decided_at: str
    """UTC time the platform accepted the decision, ISO 8601."""

    evidence_sha256: str
    """sha256 of the evidence report shown when deciding."""

    requested_by: str
    """Who asked for the promotion."""

    flow_run_id: str | None = None
    """Prefect flow run that collected the decision."""

    audit_record_hash: str = ""
    """Hash of the audit record of the accepted decision (links registry and audit log)."""


class LineageManifest(BaseModel):
    """Everything that produced one model version, by content hash."""

    schema_version: Literal["eve-lineage/2"] = SCHEMA_VERSION
    """Manifest format; bump on incompatible change."""

    model_name: str = "eve"
    """Registry artifact name."""

    version: str | None = None
    """Registry version (set at registration)."""

    created_at: str | None = None
    """UTC time of registration."""

    code_revision: str
    """``eve_model.identity.platform_commit`` of the checkout that ran the retrain."""

    raw_sources: list[DatasetRef]
    """Raw image source versions (``data.dvc``)."""

    datasets: list[DatasetRef] = Field(default_factory=list)
    """Derived versions: ingested, curated, captioned, filtered."""

    caption: CaptionRunRef | None = None
    """Teacher captioning run."""

    quality: QualityReportRef | None = None
    """Caption-quality gate result."""

    instruction_quality: QualityReportRef | None = None
    """Instruction-data (stage 3) gate result with its thresholds, so ``eve reproduce`` can re-run it;
    None without instruction data, and in manifests written before it was recorded."""

    stages: list[StageRecord] = Field(default_factory=list)
    """Training stages in run order."""

    weights: WeightsRef | None = None
    """Registered weights (set at registration)."""

    evaluation: EvaluationSummary | None = None
    """Evaluation metrics and the gate decision."""

    approvals: list[ApprovalRecord] = Field(default_factory=list)
    """Accepted review decisions, oldest first."""

    def all_datasets(self) -> list[DatasetRef]:
        return [*self.raw_sources, *self.datasets]

    def dataset_hashes(self) -> set[str]:
        hashes = {d.dataset_hash for d in self.all_datasets()}
        hashes |= {s.input_dataset_hash for s in self.stages}
        if self.quality:
            hashes.add(self.quality.dataset_hash)
        return hashes

    @property
    def ref(self) -> str:
        return f"{self.model_name}@{self.version or '?'}"


def build_lineage_manifest(
    *,
    code_revision: str,
    raw_sources: list[DatasetRef],
    datasets: list[DatasetRef] | None = None,
    caption: CaptionRunRef | None = None,
    quality: QualityReportRef | None = None,
    stages: list[StageRecord] | None = None,
    instruction_quality: QualityReportRef | None = None,
    evaluation: EvaluationSummary | None = None,
) -> LineageManifest:
    """Assemble a manifest from what the retrain steps returned; fills config hashes and checks the chain links.

    Raises ValueError when a stage trained on a dataset or started from a checkpoint that the manifest
    does not contain, so a manifest can never claim an input it cannot point to.
    """
    stages = [stage.model_copy() for stage in stages or []]
    for stage in stages:
        stage.config_sha256 = stage.config_sha256 or sha256_of_config(stage.config)
        stage.deepspeed_config_sha256 = stage.deepspeed_config_sha256 or sha256_of_config(stage.deepspeed_config)
    manifest = LineageManifest(
        code_revision=code_revision,
        raw_sources=raw_sources,
        datasets=datasets or [],
        caption=caption,
        quality=quality,
        instruction_quality=instruction_quality,
        stages=stages,
        evaluation=evaluation,
    )
    known_datasets = {d.dataset_hash for d in manifest.all_datasets()}
    known_checkpoints: set[str] = set()
    for stage in manifest.stages:
        if stage.input_dataset_hash not in known_datasets:
            raise ValueError(f"stage {stage.name!r} trained on dataset {stage.input_dataset_hash}, not in the lineage")
        if stage.parent_weights_sha256 and stage.parent_weights_sha256 not in known_checkpoints:
            raise ValueError(
                f"stage {stage.name!r} started from checkpoint {stage.parent_weights_sha256}, "
                "which no earlier stage produced"
            )
        known_checkpoints.add(stage.weights_sha256)
    for dataset in manifest.datasets:
        missing = [h for h in dataset.derived_from if h not in known_datasets]
        if missing:
            raise ValueError(f"{dataset.role} dataset {dataset.dataset_hash} derives from unknown {missing}")
    return manifest


__all__ = [
    "SCHEMA_VERSION",
    "ApprovalRecord",
    "CaptionRunRef",
    "DatasetRef",
    "LineageManifest",
    "QualityReportRef",
    "StageRecord",
    "WeightsRef",
    "build_lineage_manifest",
    "sha256_of_config",
]
