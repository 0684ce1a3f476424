"""Glue tasks of the end-to-end retrain: stage configs, evaluation inputs, lineage, registration,
and the hand-over to the promotion flow.

Each is a small function that turns the results of earlier steps into the inputs of the next;
the retrain flow only calls them in order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from prefect import task
from prefect.logging import get_run_logger
from pydantic import BaseModel, Field

from eve_model.training.config import StageConfig, preset_stage_config
from tasks.data.versioning import DatasetRegistry, DatasetVersion
from tasks.evaluate.report import EvaluationReport
from tasks.evaluate.suites import PerplexitySuite, SuiteSpec, VqaSuite
from tasks.lineage import (
    CaptionProvenance,
    DatasetRef,
    LineageManifest,
    QualityReportRef,
    StageRecord,
    build_lineage_manifest,
)
from tasks.platform import REPO_ROOT, PlatformSettings
from tasks.quality.gate import GateResult
from tasks.registry import ModelRegistry
from eve_model.identity import platform_commit
from tasks.stages import PlannedStage, StageResult
from tasks.submit.spec import JobSpec

@task(name="derived-dataset-dir")
def derived_dataset_dir(kind: str, input_dataset_hash: str, config: BaseModel | None = None) -> str:
    """Where a step writes the version it derives from ``input_dataset_hash`` with ``config``.

    Named after both, so a rerun with the same inputs finds (and resumes) its own output and a
    changed config never collides with an earlier result.
    """
    import hashlib

    config_part = hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:8] if config else "none"
    return str(PlatformSettings.load().path("datasets", kind) / f"{input_dataset_hash[:16]}-{config_part}")


@task(name="raw-source-record")
def raw_source_record(use_demo_source: bool, ingested: DatasetVersion) -> tuple[str, str]:
    """(hash, location) of the raw sources: data.dvc's md5 for the demo, else the ingested shards."""
    if use_demo_source:
        from tasks.data.demo_source import recorded_data_md5

        return recorded_data_md5(REPO_ROOT / "data.dvc"), "data/ (data.dvc)"
    return ingested.dataset_hash, ingested.remote_url


def dataset_location(version: DatasetVersion) -> str:
    """Local directory of a registered dataset version (pulled from the remote if needed)."""
    return str(DatasetRegistry.from_settings().checkout(version.tag))  # the tag is unique; a hash may be shared by two names


@task(name="dataset-location", retries=2, retry_delay_seconds=10)
def dataset_location_task(version: DatasetVersion) -> str:
    return dataset_location(version)


@task(name="demo-evaluation-suites")
def demo_evaluation_suites(eval_questions_path: str) -> list[SuiteSpec]:
    """The demo's held-out VQA (per question type; its questions carry their own answer-format
    instruction, as in training) and text-only perplexity on held-out text.

    The held-out text is the descriptions of the held-out scenes (``captions.jsonl`` next to the
    questions): text the model never trained on, in the language the base-LLM bootstrap and the
    caption stages teach, so perplexity tracks language ability. (The questions themselves are
    no such text: the bootstrap corpus is captions only and SFT scores only answers, so even the
    base LLM scored about 12k perplexity on them.) Without that file the questions with their
    answers as sentences are used.
    """
    import hashlib

    questions_path = Path(eval_questions_path)
    captions_path = questions_path.with_name("captions.jsonl")
    source = captions_path if captions_path.exists() else questions_path
    # Derived inputs live under the platform home: data/ is DVC-tracked and must stay as recorded.
    digest = hashlib.sha256(source.name.encode() + source.read_bytes()).hexdigest()[:16]
    text_path = PlatformSettings.load().path("evaluation-inputs") / f"heldout_text-{digest}.jsonl"
    if not text_path.exists():
        lines = []
        for raw in source.read_text(encoding="utf-8").splitlines():
            if raw.strip():
                row = json.loads(raw)
                text = row["caption"] if source is captions_path else f"{row['question']} {row['answer']}."
                lines.append(json.dumps({"text": text}))
        tmp = text_path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.replace(text_path)
    return [
        VqaSuite(name="demo_vqa", path=questions_path, max_new_tokens=8),
        PerplexitySuite(name="heldout_text", path=text_path),
    ]


@task(name="production-model", retries=1, retry_delay_seconds=10)
def production_model_dir() -> tuple[str | None, str | None]:
    """(version, local weights directory) of the model holding production, or (None, None)."""
    registry = ModelRegistry.default()
    version = registry.production_version()
    if version is None:
        return None, None
    target = PlatformSettings.load().path("registry-cache") / version
    if not (target / "config.json").exists():
        if target.exists():
            import shutil

            shutil.rmtree(target)
        registry.pull_version(version, target)
    return version, str(target)


def _dataset_ref(role: str, version: DatasetVersion, location: str, derived_from: list[str]) -> DatasetRef:
    return DatasetRef(
        role=role, dataset_hash=version.dataset_hash, location=location, num_items=version.num_items,
        derived_from=derived_from, dvc_md5=version.dvc_md5,
    )


@task(name="assemble-lineage")
def assemble_lineage(
    raw_source_md5: str,
    raw_source_location: str,
    versions: dict[str, DatasetVersion],
    caption_identity: dict[str, Any],
    caption_gate: GateResult,
    stages: list[tuple[PlannedStage, StageResult]],
    evaluation: dict[str, Any],
) -> LineageManifest:
    """The lineage manifest of the candidate: raw source -> datasets -> stages -> evaluation.

    ``versions`` maps roles (ingested, curated, captioned, filtered, sft, sft-filtered) to the
    registered dataset versions; the chain of ``derived_from`` follows the pipeline's order.
    """
    registry = DatasetRegistry.from_settings()
    raw = DatasetRef(role="raw", dataset_hash=raw_source_md5, location=raw_source_location, dvc_md5=raw_source_md5)
    parents = {
        "ingested": raw.dataset_hash,
        "curated": versions["ingested"].dataset_hash,
        "captioned": (versions.get("curated") or versions["ingested"]).dataset_hash,
        "filtered": versions["captioned"].dataset_hash,
        "sft": raw.dataset_hash,
        "sft-filtered": versions["sft"].dataset_hash if "sft" in versions else None,
    }
    datasets = [
        _dataset_ref(role, version, str(registry.root / version.path_in_repo), [parents[role]] if parents[role] else [])
        for role, version in versions.items()
    ]
    records = []
    for planned, result in stages:
        config = planned.config
        deepspeed_path = Path(config.output_dir) / "final" / "deepspeed_config.json"
        records.append(StageRecord(
            name=f"stage-{config.stage}",
            config=config.to_json_dict(),
            config_sha256=config.content_hash(),
            deepspeed_config=json.loads(deepspeed_path.read_text()) if deepspeed_path.exists() else {},
            input_dataset_hash=result.dataset_hash,
            parent_checkpoint_sha256=result.parent_weights_sha256,
            checkpoint_sha256=result.weights_sha256,
            checkpoint_location=result.model_dir,
            scheduler=result.backend,
            job_ids=result.job_ids,
            wandb_run_ids=[str(result.final_metrics.get("wandb_run_id"))] if result.final_metrics.get("wandb_run_id") else [],
            cache_hit=result.skipped,
        ))
    caption = CaptionProvenance(
        backend=str(caption_identity.get("backend")),
        model_name=str(caption_identity.get("model_id")),
        model_sha256=str(caption_identity.get("weights_sha256") or "none"),
        prompt=str(caption_identity.get("prompt_template") or caption_identity.get("prompt") or ""),
        sampling=dict(caption_identity.get("decoding") or {}),
        output_dataset_hash=versions["captioned"].dataset_hash,
    )
    quality = QualityReportRef(
        suite_name=caption_gate.suite_name, suite_version=caption_gate.suite_version,
        dataset_hash=caption_gate.input_dataset_hash, success=caption_gate.passed,
        statistics={"counts": caption_gate.counts.model_dump(), "summary": caption_gate.summary},
    )
    return build_lineage_manifest(
        code_revision=platform_commit(), raw_sources=[raw], datasets=datasets, caption=caption, quality=quality,
        stages=records, evaluation=evaluation,
    )


@task(name="launch-promotion")
def launch_detached_promotion(request_json: str, candidate_version: str) -> str:
    """Start the promotion flow in its own process, detached, and return its log path.

    The promotion pauses for days waiting for a reviewer; the retrain (and the demo command)
    finish without waiting. Production deployments use ``run_deployment`` instead so a worker
    owns the waiting run.
    """
    settings = PlatformSettings.load()
    promotions = settings.path("promotions")
    request_path = promotions / f"{candidate_version}.request.json"
    request_path.write_text(request_json)
    log_path = promotions / f"{candidate_version}.log"
    with open(log_path, "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "flows.promotion_flow", "--request", str(request_path),
             "--flow-run-name", f"promote-{candidate_version}"],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(os.environ), start_new_session=True,
        )
    return str(log_path)


def evaluation_summary(report: EvaluationReport, gate: Any) -> dict[str, Any]:
    return {
        "metrics": report.flat_metrics(),
        "model_dir_hash": report.model_dir_hash,
        "gate": gate.model_dump(mode="json") if hasattr(gate, "model_dump") else gate,
    }
