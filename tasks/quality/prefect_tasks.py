"""Thin Prefect tasks over the quality gate: run it, publish artifacts, stop the flow on failure.

The work is done by ``tasks.quality.gate``; these wrappers only add what Prefect gives: retries
and timeouts on the decorator, and the markdown + table artifacts reviewers see in the UI. A
failing gate raises ``QualityGateFailed`` after its artifacts are published, so downstream
training never starts on a rejected version and the evidence is still there. Each gate is an
OpenLineage run: the gated version in, the filtered version out (FAIL when it rejects).
"""

from __future__ import annotations

import re

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from tasks.lineage.openlineage import LineageDataset, lineage_run
from tasks.lineage.openlineage_refs import dataset_ref
from tasks.quality.config import CaptionGateThresholds, InstructionGateThresholds
from tasks.quality.gate import GateResult, QualityGateFailed, gate_caption_dataset, gate_instruction_dataset
from tasks.quality.report import delta_table_rows, render_markdown


def _artifact_key(prefix: str, result: GateResult) -> str:
    # Prefect keys allow lowercase letters, digits and dashes only.
    return re.sub(r"[^a-z0-9-]", "-", f"{prefix}-{result.suite_name}".lower())


def publish_gate_artifacts(result: GateResult) -> None:
    """Markdown report (rules in force, Data Docs link), per-metric delta table and a link to the
    version's GX Data Docs as Prefect artifacts (inside a flow/task run)."""
    create_markdown_artifact(
        render_markdown(result),
        key=_artifact_key("quality-report", result),
        description=f"{result.suite_name} v{result.suite_version} on {result.input_dataset_hash[:12]}",
    )
    create_table_artifact(
        delta_table_rows(result),
        key=_artifact_key("quality-deltas", result),
        description="caption-quality metrics vs the previous dataset version",
    )
    if result.data_docs_index:
        create_link_artifact(
            result.data_docs_page or result.data_docs_index,
            link_text=f"GX Data Docs of {result.input_dataset_hash[:12]}",
            key=_artifact_key("quality-data-docs", result),
            description=f"Data Docs of dataset version {result.input_dataset_hash[:12]} (index: {result.data_docs_index})",
        )


def _finish(result: GateResult, fail_on_reject: bool, written: list[LineageDataset]) -> GateResult:
    """Publish the artifacts; name the filtered version in the step's OpenLineage output (a gate that
    rejects writes none); raise on a rejection when asked (the lineage run then ends in FAIL)."""
    publish_gate_artifacts(result)
    if result.output_location and result.output_dataset_hash:
        written.append(dataset_ref(result.output_location, "filtered", result.output_dataset_hash,
                                   result.counts.num_kept))
    if fail_on_reject and not result.passed:
        raise QualityGateFailed(
            f"{result.suite_name} rejected dataset {result.input_dataset_hash[:12]}: "
            + "; ".join(result.reasons)
        )
    return result


@task(name="gate-captions", retries=0, timeout_seconds=6 * 3600)
def gate_captions(
    input_location: str,
    output_dir: str,
    thresholds: CaptionGateThresholds | None = None,
    previous_dataset_hash: str | None = None,
    fail_on_reject: bool = True,
) -> GateResult:
    """Caption quality gate; raises ``QualityGateFailed`` on a rejected version when ``fail_on_reject``."""
    with lineage_run("caption-gate", [dataset_ref(input_location, "captioned")]) as written:
        result = gate_caption_dataset(
            input_location, output_dir, thresholds, previous_dataset_hash=previous_dataset_hash
        )
        return _finish(result, fail_on_reject, written)


@task(name="gate-instruction-data", retries=0, timeout_seconds=6 * 3600)
def gate_instruction_data(
    input_location: str,
    output_dir: str,
    thresholds: InstructionGateThresholds | None = None,
    previous_dataset_hash: str | None = None,
    fail_on_reject: bool = True,
) -> GateResult:
    """Instruction-data (stage 3) gate; raises ``QualityGateFailed`` on a rejected version."""
    with lineage_run("instruction-gate", [dataset_ref(input_location, "sft")]) as written:
        result = gate_instruction_dataset(
            input_location, output_dir, thresholds, previous_dataset_hash=previous_dataset_hash
        )
        return _finish(result, fail_on_reject, written)


__all__ = ["gate_captions", "gate_instruction_data", "publish_gate_artifacts"]
