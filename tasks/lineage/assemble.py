"""The retrain's lineage step: build a candidate's manifest from what the earlier steps returned."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task

from eve_model.identity import platform_commit
from eve_model.shards import read_manifest
from tasks.caption.provenance import BackendIdentity
from tasks.data.sharding import REPORT_FILE
from tasks.data.sources import SourceSpec
from tasks.data.steps import dataset_location
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
    "sft": ("raw-sft",),
    "sft-filtered": ("sft",),
    "sft-mixture": ("sft-filtered", "filtered"),
}
"""Where each dataset role comes from in the pipeline (captions from the ingested set when there is
no curation); the SFT mixture has two parents: the gated instruction data and the gated captions."""


RAW_ROLE_OF = {"ingested": "raw", "sft": "raw-sft"}
"""The raw source role each ingested dataset role comes from: captions and conversations each have
their own source (they may be the same files, as in the demo)."""


def raw_source_refs(
    use_demo_source: bool,
    versions: dict[str, DatasetVersion],
    ingested_now: dict[str, tuple[list[SourceSpec], str]] | None = None,
) -> list[DatasetRef]:
    """The raw sources of the ingested versions, each by its own location and content hash.

    The bundled demo is ``data/``, tracked by ``data.dvc`` (its DVC md5, one source for captions and
    conversations). A role this retrain ingested (``ingested_now``: role -> the source specs and the
    ingest's ``source_content_sha256``) is recorded from what it read: the same files in a folder and
    on S3 give one registered version (content addressing) but each retrain names its own source.
    A role taken from a registered version (``dataset``) is read back from the version itself, which
    recorded what it was made from (``manifest.extra["sources"]`` and the ingest report)."""
    if use_demo_source:
        from tasks.data.demo_source import recorded_data_md5

        md5 = recorded_data_md5(REPO_ROOT / "data.dvc")
        return [DatasetRef(role="raw", dataset_hash=md5, location="data/ (data.dvc)", dvc_md5=md5)]
    refs = []
    for role, raw_role in RAW_ROLE_OF.items():
        if role not in versions:
            continue
        sources, content_hash = (ingested_now or {}).get(role, ([], ""))
        if sources and content_hash:
            refs.append(_source_ref(raw_role, [source.model_dump() for source in sources], content_hash))
        else:
            refs.append(_recorded_source_ref(raw_role, versions[role]))
    return refs


def _source_ref(role: str, sources: list[dict], content_hash: str, num_items: int | None = None) -> DatasetRef:
    uris = [str(source.get("location", "")) for source in sources]
    dvc_md5 = _dvc_md5_of(uris[0]) if len(uris) == 1 else None
    if dvc_md5:  # a DVC-tracked source is named by DVC's own hash
        return DatasetRef(role=role, dataset_hash=dvc_md5, location=_describe(sources[0]), dvc_md5=dvc_md5)
    return DatasetRef(role=role, dataset_hash=content_hash, location="; ".join(_describe(s) for s in sources),
                      num_items=num_items)


def _recorded_source_ref(role: str, ingested: DatasetVersion) -> DatasetRef:
    location = Path(dataset_location(ingested))
    sources = [s for s in (read_manifest(location).extra.get("sources") or []) if isinstance(s, dict)]
    report_path = location / REPORT_FILE
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if sources and report.get("source_content_sha256"):
        return _source_ref(role, sources, report["source_content_sha256"], report.get("num_in"))
    # A version ingested before sources were recorded: say so instead of inventing a parent.
    return DatasetRef(role=role, dataset_hash=f"unrecorded-source-of-{ingested.dataset_hash}",
                      location=f"the raw source of {ingested.tag} was not recorded at its ingest")


def _describe(source: dict) -> str:
    """A source's location, with its records file for a folder (captions and conversations may be two
    records files of one folder)."""
    location = str(source.get("location", ""))
    records = source.get("records_file")
    return f"{location} ({records})" if source.get("kind", "image_folder") == "image_folder" and records else location


def _dvc_md5_of(uri: str) -> str | None:
    """DVC's md5 of a local source that DVC tracks with a ``<path>.dvc`` file beside it, else None."""
    if "://" in uri:
        return None
    pointer = Path(uri.rstrip("/") + ".dvc")
    if not pointer.is_file():
        return None
    from tasks.data.demo_source import recorded_data_md5

    try:
        return recorded_data_md5(pointer)
    except (KeyError, IndexError, TypeError, ValueError):
        return None


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


def dataset_chain(raw_sources: list[DatasetRef], versions: dict[str, DatasetVersion]) -> list[DatasetRef]:
    """Every registered dataset of a retrain with its real parents: the ingested captions from the
    caption source, the ingested conversations from the conversation source, each derived set from
    the step before it, the SFT mixture from both gated sets."""
    registry = DatasetRegistry.from_settings()
    raw_hashes = {raw.role: raw.dataset_hash for raw in raw_sources}
    raw_hashes.setdefault("raw-sft", raw_hashes.get("raw", ""))  # one source for both (the demo's data/)
    hashes = {**raw_hashes, **{role: version.dataset_hash for role, version in versions.items()}}
    datasets = []
    for role, version in versions.items():
        parent_roles = ["ingested" if parent == "curated" and parent not in hashes else parent
                        for parent in _PARENT_ROLES[role]]
        datasets.append(DatasetRef(
            role=role, dataset_hash=version.dataset_hash, location=str(registry.root / version.path_in_repo),
            num_items=version.num_items, derived_from=[hashes[parent] for parent in parent_roles], dvc_md5=version.dvc_md5,
        ))
    return datasets


def _quality_ref(gate: GateResult) -> QualityReportRef:
    return QualityReportRef(
        suite_name=gate.suite_name, suite_version=gate.suite_version,
        dataset_hash=gate.input_dataset_hash, success=gate.passed,
        statistics={"counts": gate.counts.model_dump(), "summary": gate.summary},
        thresholds=gate.thresholds,
    )


@task(name="assemble-lineage")
def assemble_lineage(
    raw_sources: list[DatasetRef],
    versions: dict[str, DatasetVersion],
    caption_identity: BackendIdentity,
    caption_gate: GateResult,
    stages: list[TrainedStage],
    evaluation: EvaluationSummary,
    instruction_gate: GateResult | None = None,
) -> LineageManifest:
    """The lineage manifest of the candidate: raw source -> datasets -> stages -> evaluation.

    ``versions`` maps roles (ingested, curated, captioned, filtered, sft, sft-filtered, sft-mixture) to
    the registered dataset versions; ``derived_from`` follows the pipeline's order (two parents for the
    SFT mixture). ``instruction_gate``: the stage-3 data gate, recorded with its thresholds like the
    caption gate's.
    """
    datasets = dataset_chain(raw_sources, versions)
    return build_lineage_manifest(
        code_revision=platform_commit(),
        raw_sources=raw_sources,
        datasets=datasets,
        caption=CaptionRunRef(identity=caption_identity, output_dataset_hash=versions["captioned"].dataset_hash),
        quality=_quality_ref(caption_gate),
        instruction_quality=_quality_ref(instruction_gate) if instruction_gate is not None else None,
        stages=[_stage_record(trained) for trained in stages],
        evaluation=evaluation,
    )


__all__ = ["RAW_ROLE_OF", "assemble_lineage", "dataset_chain", "raw_source_refs"]
