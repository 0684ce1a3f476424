"""The candidate's evaluation as a W&B run in its retrain's group (beside the stages' runs).

One run (job type ``evaluation``) per evaluated candidate: every metric of the candidate and of
production (``production/<metric>``) and the gate's verdict in its summary, a table of sample answers
with their images (``sample_answers``), and the candidate model and the datasets it was trained and
evaluated on as artifacts by reference (a URI plus the content hash in the metadata; nothing is
uploaded). Offline by default like the stages (``wandb sync`` later); W&B is an observer here too: a
failure is reported and the retrain goes on.
"""

from __future__ import annotations

import base64
import io
from typing import Any

from pydantic import BaseModel, Field

from eve_model.training.metrics_logging import (
    ArtifactReference,
    fresh_wandb_setup,
    log_reference_artifact,
    reference_uri,
    use_wandb_dir,
)
from tasks.evaluate.gates import GateDecision
from tasks.evaluate.report import EvaluationReport
from tasks.platform import PlatformSettings


class WandbTarget(BaseModel):
    """Where and how the evaluation run is recorded."""

    mode: str = "offline"
    """``offline``, ``online`` or ``disabled`` (the stages' ``StageConfig.wandb_mode``)."""
    project: str = "eve-retrain"
    """W&B project (the stages')."""
    group: str | None = None
    """The retrain's run name."""
    tags: list[str] = Field(default_factory=list)
    """Recipe and the like."""


class TrackedDataset(BaseModel):
    """A dataset the candidate was trained or evaluated on."""

    role: str
    """E.g. ``filtered`` (stages 1-2), ``sft-mixture`` (stage 3), ``eval``."""
    location: str
    """Directory or ``s3://`` URL."""
    dataset_hash: str
    """Its content hash."""


def _decoded_image(data_uri: str | None):
    if not data_uri or not data_uri.startswith("data:image/"):
        return None
    from PIL import Image

    payload = base64.b64decode(data_uri.split(",", 1)[1])
    with Image.open(io.BytesIO(payload)) as image:
        return image.convert("RGB")


def log_evaluation_run(
    candidate: EvaluationReport,
    production: EvaluationReport | None,
    gate: GateDecision,
    samples: list[dict[str, Any]],
    datasets: list[TrackedDataset],
    target: WandbTarget,
    settings: PlatformSettings | None = None,
) -> str | None:
    """Record the evaluation in W&B; returns the run id (None when disabled)."""
    if target.mode == "disabled":
        return None
    import wandb

    wandb_dir = (settings or PlatformSettings.load()).path("wandb")
    fresh_wandb_setup()
    use_wandb_dir(wandb_dir)
    weights = candidate.weights_sha256
    run = wandb.init(
        project=target.project, name=f"evaluate-{weights[:12]}", group=target.group, job_type="evaluation",
        tags=[*target.tags, "evaluation", f"weights:{weights[:12]}"], dir=str(wandb_dir), mode=target.mode,
        config={"candidate_weights_sha256": weights, "production_weights_sha256":
                production.weights_sha256 if production else None, "gate_policy": gate.policy.model_dump(mode="json")},
        reinit="create_new",
    )
    try:
        for name, value in candidate.flat_metrics().items():
            run.summary[name] = value
        for name, value in (production.flat_metrics() if production else {}).items():
            run.summary[f"production/{name}"] = value
        run.summary["gate/passed"] = gate.passed
        run.summary["gate/failed_checks"] = len(gate.failures)
        table = wandb.Table(columns=["image", "question", "type", "right answer", "candidate", "production", "score"])
        for sample in samples:
            image = _decoded_image(sample.get("image_data_uri"))
            table.add_data(wandb.Image(image) if image is not None else None, sample.get("prompt"),
                           sample.get("question_type"), sample.get("reference"), sample.get("candidate_output"),
                           sample.get("production_output"), sample.get("candidate_score"))
        run.log({"sample_answers": table})
        log_reference_artifact(run, ArtifactReference(
            name=f"eve-candidate-{weights[:16]}", kind="model", role="input", uri=reference_uri(candidate.model_dir),
            content_hash=weights, metadata={"gate_passed": gate.passed},
        ))
        for dataset in datasets:
            log_reference_artifact(run, ArtifactReference(
                name=f"dataset-{dataset.dataset_hash[:16]}", kind="dataset", role="input",
                uri=reference_uri(dataset.location), content_hash=dataset.dataset_hash, metadata={"role": dataset.role},
            ))
        return run.id
    finally:
        run.finish()


__all__ = ["TrackedDataset", "WandbTarget", "log_evaluation_run"]
