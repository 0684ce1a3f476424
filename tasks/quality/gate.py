"""The quality gate on a dataset version: metrics -> GX suite -> filtered version + GateResult.

    result = gate_caption_dataset("/data/captioned-v3", "/data/filtered-v3")
    result.passed, result.reasons, result.counts   # in = kept + filtered, per-reason counts

A passing gate writes the kept samples, unchanged, as a new dataset version (``write_subset``) and
records the gate in its manifest ``extra``. A failing gate writes no dataset (nothing downstream
can pick up a rejected version) but stores the full evidence: GX's result, the metrics table and
every filtered sample with its reason. Rerunning a gate on the same input with the same suite
and thresholds reuses the dataset it wrote before.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, Field

from eve_model.shards import DatasetIntegrityError, iter_samples, read_manifest, verify_dataset, write_subset
from tasks.platform import PlatformSettings
from tasks.publish import atomic_write_text, produce_once
from tasks.quality.config import CaptionGateThresholds, InstructionGateThresholds
from tasks.quality.instruction_metrics import compute_instruction_metrics, summarize_instruction_metrics
from tasks.quality.metrics import compute_caption_metrics, summarize_caption_metrics
from tasks.quality.report import MetricDelta, metric_deltas
from tasks.quality.store import QualityStore, result_key
from tasks.quality.suites import (
    CAPTION_SUITE_NAME,
    CAPTION_SUITE_VERSION,
    INSTRUCTION_SUITE_NAME,
    INSTRUCTION_SUITE_VERSION,
    build_caption_suite,
    build_instruction_suite,
)
from tasks.quality.validate import TableDecision, decide


logger = logging.getLogger(__name__)


class QualityGateFailed(RuntimeError):
    """Raised by the Prefect task when a version fails its gate (the plain functions only report)."""


class GateCounts(BaseModel):
    """Sample counts of one gate run; ``num_input == num_kept + num_filtered`` always."""

    num_input: int
    """Samples in the input version."""
    num_kept: int
    """Samples that passed every row rule."""
    num_filtered: int
    """Samples filtered out, each for exactly one reason."""
    filtered_by_reason: dict[str, int] = Field(default_factory=dict)
    """Filtered samples per reason (the first broken rule in suite order); sums to num_filtered."""


class GateResult(BaseModel):
    """Outcome of one gate run: the decision, its evidence and where it is stored."""

    suite_name: str
    """GX suite that was run."""
    suite_version: str
    """Version of that suite."""
    thresholds_fingerprint: str
    """Hash of the thresholds (with the suite version, the result key)."""
    thresholds: dict[str, Any]
    """The thresholds themselves (every one in force)."""
    profile: str | None = None
    """Caption-gate profile the thresholds came from (None for the instruction gate)."""
    threshold_overrides: dict[str, Any] = Field(default_factory=dict)
    """Thresholds set to other values than the profile's defaults: name -> [value, profile default]."""
    input_dataset_hash: str
    """dataset_hash of the gated version."""
    output_dataset_hash: str | None = None
    """dataset_hash of the filtered version; None when the gate failed (nothing written)."""
    output_location: str | None = None
    """Where the filtered version was written."""
    passed: bool
    """True when no aggregate rule broke."""
    reasons: list[str] = Field(default_factory=list)
    """One line per broken aggregate rule; empty when passed."""
    counts: GateCounts
    """Counts that reconcile: in = kept + filtered."""
    rules: list[dict[str, Any]] = Field(default_factory=list)
    """Every rule's outcome (rule, scope, success, unexpected_count, observed_value)."""
    summary: dict[str, Any] = Field(default_factory=dict)
    """Dataset-level metric statistics of the input version."""
    previous_dataset_hash: str | None = None
    """The version the deltas compare against."""
    deltas: list[MetricDelta] = Field(default_factory=list)
    """Per-metric change against the previous version."""
    result_dir: str = ""
    """Directory of the stored result under the platform home."""
    duration_seconds: float = 0.0
    """Wall time of the gate run."""
    data_docs_index: str | None = None
    """file:// URL of the dataset version's GX Data Docs site (every validation of the version)."""
    data_docs_page: str | None = None
    """file:// URL of this validation's page in that site."""


def _counts(decision: TableDecision) -> GateCounts:
    reasons = decision.filtered_reason.dropna()
    return GateCounts(
        num_input=len(decision.filtered_reason),
        num_kept=int(decision.kept_mask.sum()),
        num_filtered=len(reasons),
        filtered_by_reason={str(k): int(v) for k, v in reasons.value_counts().items()},
    )


def _run_gate(
    *,
    input_location: str | Path,
    output_dir: str | Path,
    suite_name: str,
    suite_version: str,
    thresholds: CaptionGateThresholds | InstructionGateThresholds,
    build_table: Callable[[list], pd.DataFrame],
    build_suite: Callable[[], Any],
    summarize: Callable[[pd.DataFrame], dict[str, Any]],
    filtered_text: Callable[[Any], Any],
    previous_dataset_hash: str | None,
    compare_with_latest: bool,
    settings: PlatformSettings | None,
    max_items_per_shard: int,
) -> GateResult:
    started = time.perf_counter()
    manifest = read_manifest(input_location)
    dataset_hash = manifest.dataset_hash
    fingerprint = thresholds.fingerprint()
    gate_record = {
        "suite_name": suite_name,
        "suite_version": suite_version,
        "thresholds_fingerprint": fingerprint,
        "input_dataset_hash": dataset_hash,
    }
    output_dir = Path(output_dir)
    if (output_dir / "manifest.json").exists():
        existing = read_manifest(output_dir)
        if existing.extra.get("quality_gate", {}) | {"result_key": None} != gate_record | {"result_key": None}:
            raise DatasetIntegrityError(
                f"{output_dir} already holds a dataset that is not this gate's output for "
                f"{dataset_hash[:12]} ({suite_name} v{suite_version}); choose another output directory"
            )

    # Only metadata is held in memory; image bytes stay in the shards until the output pass.
    samples = [(sample.key, sample.meta, _image_id(sample)) for sample in iter_samples(input_location, manifest=manifest)]
    logger.info("%s: %d samples of %s read; computing metrics", suite_name, len(samples), dataset_hash[:12])
    table = build_table(samples)
    logger.info("%s: metrics done; validating with GX", suite_name)
    store = QualityStore(settings)
    key = result_key(dataset_hash, suite_name, suite_version, fingerprint)
    decision = decide(
        table, build_suite(), thresholds.max_filtered_fraction,
        data_docs_root=store.data_docs_root(dataset_hash), run_name=key.replace("/", "-"),
    )
    counts = _counts(decision)
    logger.info("%s: %s; %d kept, %d filtered %s", suite_name, "passed" if decision.passed else "FAILED",
                counts.num_kept, counts.num_filtered, counts.filtered_by_reason)
    summary = summarize(table)

    if previous_dataset_hash is not None:
        previous_entry = store.find_previous(suite_name, dataset_hash=previous_dataset_hash)
    elif compare_with_latest:
        previous_entry = store.find_previous(suite_name, exclude_dataset_hash=dataset_hash)
    else:
        previous_entry = None
    previous_summary = store.load(previous_entry["key"], "summary.json") if previous_entry else None

    output_hash = None
    if decision.passed:
        output_hash = _write_kept(
            input_location, manifest, output_dir, set(table["key"][decision.kept_mask].tolist()),
            gate_record | {"result_key": key}, max_items_per_shard,
        )

    reasons_by_key = dict(zip(table["key"].tolist(), decision.filtered_reason.tolist()))
    filtered_records = [
        {"key": key_, "reason": reasons_by_key[key_], "text": filtered_text(meta)}
        for key_, meta, _ in samples
        if isinstance(reasons_by_key[key_], str)
    ]
    result = GateResult(
        suite_name=suite_name,
        suite_version=suite_version,
        thresholds_fingerprint=fingerprint,
        thresholds=thresholds.model_dump(mode="json"),
        profile=thresholds.profile if isinstance(thresholds, CaptionGateThresholds) else None,
        threshold_overrides=(
            {name: list(pair) for name, pair in thresholds.overrides().items()}
            if isinstance(thresholds, CaptionGateThresholds) else {}
        ),
        input_dataset_hash=dataset_hash,
        output_dataset_hash=output_hash,
        output_location=str(output_dir) if output_hash else None,
        passed=decision.passed,
        reasons=decision.reasons,
        counts=counts,
        rules=[vars(rule) for rule in decision.rules],
        summary=summary,
        previous_dataset_hash=previous_entry["input_dataset_hash"] if previous_entry else None,
        deltas=metric_deltas(summary, previous_summary),
        data_docs_index=store.data_docs_index(dataset_hash).as_uri(),
        data_docs_page=decision.data_docs_page,
    )
    result.duration_seconds = time.perf_counter() - started
    result_dir = store.save(
        key,
        gate_result=result.model_dump(mode="json"),
        gx_result=decision.gx_result,
        summary=summary,
        filtered_records=filtered_records,
        metrics_table=table.assign(filtered_reason=decision.filtered_reason),
        index_entry={**gate_record, "passed": decision.passed, "output_dataset_hash": output_hash},
    )
    result.result_dir = str(result_dir)
    atomic_write_text(result_dir / "gate_result.json", result.model_dump_json(indent=2))  # a concurrent run may republish it
    return result


def _image_id(sample: Any) -> str | None:
    """The image's identity: the sha256 recorded at ingest, else the hash of its bytes; None: no image."""
    if sample.meta.get("image_sha256"):
        return str(sample.meta["image_sha256"])
    return hashlib.sha256(sample.image_bytes).hexdigest() if sample.image_bytes is not None else None


def _write_kept(
    input_location: str | Path,
    manifest: Any,
    output_dir: Path,
    kept_keys: set[str],
    gate_record: dict[str, Any],
    max_items_per_shard: int,
) -> str:
    extra = {**manifest.extra, "quality_gate": gate_record}

    def produce(private: Path) -> None:
        write_subset(input_location, manifest, private, kept_keys.__contains__, extra, max_items_per_shard)

    def published(directory: Path) -> bool:  # this gate's own verified output (another run's is refused above)
        if not (directory / "manifest.json").exists():
            return False
        try:
            recorded = verify_dataset(directory).extra.get("quality_gate", {})
            return recorded | {"result_key": None} == gate_record | {"result_key": None}
        except DatasetIntegrityError:
            return False

    # Produced privately and renamed into place (tasks.publish): two runs gating the same version at
    # once both end with the same verified output.
    produce_once(output_dir, produce, published)
    return read_manifest(output_dir).dataset_hash


def gate_caption_dataset(
    input_location: str | Path,
    output_dir: str | Path,
    thresholds: CaptionGateThresholds | None = None,
    *,
    previous_dataset_hash: str | None = None,
    compare_with_latest: bool = True,
    settings: PlatformSettings | None = None,
    max_items_per_shard: int = 500,
    metrics_workers: int = 1,
) -> GateResult:
    """Gate the captions of a dataset version (see the module docstring).

    Deltas compare with ``previous_dataset_hash``'s stored result, or else (``compare_with_latest``)
    with the most recently gated other version. ``metrics_workers`` > 1 computes the metrics'
    chunks (``CHUNK_CAPTIONS``) in that many processes: it changes speed, never the result. The
    default is 1: the whole gate runs at about 6 x 10^4 captions/s per core (docs/data-quality.md),
    and scaling out is the data steps' shard-parallel engine's job (benchmarks/bench_quality.py --workers).
    """
    thresholds = thresholds or CaptionGateThresholds()

    def build_table(samples: list) -> pd.DataFrame:
        return compute_caption_metrics(
            [key for key, _, _ in samples],
            [meta.get("caption") for _, meta, _ in samples],
            near_duplicate_jaccard=thresholds.near_duplicate_jaccard,
            progress=len(samples) >= 100_000,
            workers=metrics_workers,
            image_ids=[image_id for _, _, image_id in samples],
        )

    return _run_gate(
        input_location=input_location,
        output_dir=output_dir,
        suite_name=CAPTION_SUITE_NAME,
        suite_version=CAPTION_SUITE_VERSION,
        thresholds=thresholds,
        build_table=build_table,
        build_suite=lambda: build_caption_suite(thresholds),
        summarize=summarize_caption_metrics,
        filtered_text=lambda meta: meta.get("caption"),
        previous_dataset_hash=previous_dataset_hash,
        compare_with_latest=compare_with_latest,
        settings=settings,
        max_items_per_shard=max_items_per_shard,
    )


def gate_instruction_dataset(
    input_location: str | Path,
    output_dir: str | Path,
    thresholds: InstructionGateThresholds | None = None,
    *,
    previous_dataset_hash: str | None = None,
    compare_with_latest: bool = True,
    settings: PlatformSettings | None = None,
    max_items_per_shard: int = 500,
) -> GateResult:
    """Gate the conversations of a stage-3 instruction dataset version."""
    thresholds = thresholds or InstructionGateThresholds()

    def build_table(samples: list) -> pd.DataFrame:
        return compute_instruction_metrics(
            [key for key, _, _ in samples],
            [meta.get("conversations") for _, meta, _ in samples],
            [image_id is not None for _, _, image_id in samples],
            [image_id for _, _, image_id in samples],
        )

    return _run_gate(
        input_location=input_location,
        output_dir=output_dir,
        suite_name=INSTRUCTION_SUITE_NAME,
        suite_version=INSTRUCTION_SUITE_VERSION,
        thresholds=thresholds,
        build_table=build_table,
        build_suite=lambda: build_instruction_suite(thresholds),
        summarize=summarize_instruction_metrics,
        filtered_text=lambda meta: meta.get("conversations"),
        previous_dataset_hash=previous_dataset_hash,
        compare_with_latest=compare_with_latest,
        settings=settings,
        max_items_per_shard=max_items_per_shard,
    )


__all__ = [
    "GateCounts",
    "GateResult",
    "QualityGateFailed",
    "gate_caption_dataset",
    "gate_instruction_dataset",
]
