"""Lineage for people: the derived graph (nodes are the model version, stage checkpoints, datasets,
the caption run, the quality report and the code revision; edges point from an output to its
inputs), as an indented text tree with full hashes, Graphviz dot, a picture laid out by Graphviz
(PNG/SVG), and a markdown summary."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from tasks.lineage.schema import DatasetRef, LineageManifest

class LineageNode(BaseModel):
    node_id: str
    kind: Literal["model", "checkpoint", "dataset", "caption", "quality", "code"]
    label: str


class LineageGraph(BaseModel):
    """Nodes and edges (output -> input) of one version's lineage; ``root`` is the model version."""

    root: str
    nodes: dict[str, LineageNode]
    edges: list[tuple[str, str]]

    def inputs_of(self, node_id: str) -> list[str]:
        return [target for source, target in self.edges if source == node_id]


def _short(digest: str | None) -> str:
    return (digest or "?")[:12]


def build_lineage_graph(manifest: LineageManifest) -> LineageGraph:
    nodes: dict[str, LineageNode] = {}
    edges: list[tuple[str, str]] = []

    def add(node_id: str, kind: str, label: str) -> str:
        nodes.setdefault(node_id, LineageNode(node_id=node_id, kind=kind, label=label))
        return node_id

    def link(source: str, target: str) -> None:
        if (source, target) not in edges:
            edges.append((source, target))

    weights = manifest.weights
    root = add(
        f"model:{manifest.ref}",
        "model",
        f"{manifest.ref}\nweights {_short(weights.sha256 if weights else None)}",
    )
    code = add(f"code:{manifest.code_revision}", "code", f"code {_short(manifest.code_revision)}")
    link(root, code)

    for dataset_hash, refs in _datasets_by_hash(manifest).items():
        add(f"dataset:{dataset_hash}", "dataset", f"{_roles(refs)} data\n{_short(dataset_hash)}{_items(refs[-1])}")
    for dataset in manifest.all_datasets():
        for parent in dataset.derived_from:
            link(f"dataset:{dataset.dataset_hash}", f"dataset:{parent}")
    if manifest.caption and manifest.caption.output_dataset_hash:
        caption = manifest.caption.identity
        caption_node = add(
            f"caption:{caption.fingerprint()}",
            "caption",
            f"captions by {caption.model_id} ({caption.backend})\nmodel {_short(caption.weights_sha256)} "
            f"prompt {_short(caption.prompt_sha256)}",
        )
        link(f"dataset:{manifest.caption.output_dataset_hash}", caption_node)
    if manifest.quality:
        quality = manifest.quality
        quality_node = add(
            f"quality:{quality.suite_name}:{quality.suite_version}:{quality.dataset_hash}",
            "quality",
            f"GX {quality.suite_name} {quality.suite_version}\n{'passed' if quality.success else 'FAILED'}",
        )
        link(quality_node, f"dataset:{quality.dataset_hash}")
        # The filtered data exists because the gate let it through.
        for dataset in manifest.datasets:
            if quality.dataset_hash in dataset.derived_from or dataset.dataset_hash == quality.dataset_hash:
                if dataset.dataset_hash != quality.dataset_hash:
                    link(f"dataset:{dataset.dataset_hash}", quality_node)

    previous_stage_node = None
    for stage in manifest.stages:
        stage_node = add(
            f"checkpoint:{stage.weights_sha256}",
            "checkpoint",
            f"{stage.name} checkpoint {_short(stage.weights_sha256)}\n"
            f"config {_short(stage.config_sha256)} jobs {','.join(stage.job_ids) or '-'}",
        )
        link(stage_node, f"dataset:{stage.input_dataset_hash}")
        if stage.parent_weights_sha256:
            link(stage_node, f"checkpoint:{stage.parent_weights_sha256}")
        previous_stage_node = stage_node
    if previous_stage_node:
        link(root, previous_stage_node)
    return LineageGraph(root=root, nodes=nodes, edges=edges)


def _datasets_by_hash(manifest: LineageManifest) -> dict[str, list[DatasetRef]]:
    """Several roles can hold the same bytes (a gate that dropped nothing outputs its input): one entry
    per hash, with every ref that has it."""
    datasets: dict[str, list[DatasetRef]] = {}
    for ref in manifest.all_datasets():
        datasets.setdefault(ref.dataset_hash, []).append(ref)
    return datasets


def _roles(refs: list[DatasetRef]) -> str:
    return " = ".join(dict.fromkeys(ref.role for ref in reversed(refs)))


def _items(ref: DatasetRef) -> str:
    return f", {ref.num_items} items" if ref.num_items is not None else ""


def _number(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _evaluation_lines(manifest: LineageManifest, pad: str) -> list[str]:
    evaluation = manifest.evaluation
    if evaluation is None:
        return []
    gate = evaluation.gate
    lines = [f"{pad}evaluation of weights {evaluation.weights_sha256}: gate {'passed' if gate.passed else 'FAILED'}"]
    for name, value in sorted(evaluation.metrics.items()):
        lines.append(f"{pad}  {name:<40} {_number(value)}")
    for check in gate.checks:
        lines.append(f"{pad}  {'pass' if check.passed else 'FAIL'} {check.rule} {check.metric}: {check.reason}")
    return lines


def format_lineage_text(manifest: LineageManifest) -> str:
    """The chain as an indented tree, from the weights down to the raw sources, with full hashes."""
    lines = [f"{manifest.ref}  (lineage {manifest.schema_version})", f"  platform commit  {manifest.code_revision}"]
    if manifest.weights:
        lines.append(f"  weights sha256   {manifest.weights.sha256}")
        lines.append(f"  weights dvc md5  {manifest.weights.dvc_md5}  ({manifest.weights.path} in the registry)")
    for approval in manifest.approvals:
        lines.append(f"  {approval.decision}d by {approval.reviewer} at {approval.decided_at}: {approval.comment}")
        lines.append(f"    requested by {approval.requested_by}; evidence sha256 {approval.evidence_sha256}")
    lines += _evaluation_lines(manifest, "  ")
    datasets = _datasets_by_hash(manifest)
    seen: set[str] = set()

    def dataset_lines(dataset_hash: str, depth: int) -> None:
        pad = "  " * depth
        refs = datasets.get(dataset_hash)
        if not refs:
            lines.append(f"{pad}└─ dataset {dataset_hash} (not described in this manifest)")
            return
        ref = refs[-1]
        lines.append(f"{pad}└─ {_roles(refs)} data {dataset_hash}{_items(ref)}")
        lines.append(f"{pad}   at {ref.location}" + (f"  (DVC md5 {ref.dvc_md5})" if ref.dvc_md5 else ""))
        if dataset_hash in seen:
            lines.append(f"{pad}   (its inputs are listed above)")
            return
        seen.add(dataset_hash)
        if manifest.caption and manifest.caption.output_dataset_hash == dataset_hash:
            caption = manifest.caption.identity
            lines.append(f"{pad}   captions by {caption.backend} {caption.model_id}, weights {caption.weights_sha256 or 'not reported'}")
            lines.append(f"{pad}     prompt {caption.prompt_template or '(none)'} sha256 {caption.prompt_sha256}")
            if caption.decoding:
                lines.append(f"{pad}     decoding " + ", ".join(f"{k}={_number(v)}" for k, v in sorted(caption.decoding.items())))
        if manifest.quality and manifest.quality.dataset_hash == dataset_hash:
            quality = manifest.quality
            lines.append(f"{pad}   quality gate {quality.suite_name} {quality.suite_version}: {'passed' if quality.success else 'FAILED'}")
            counts = quality.statistics.get("counts") or {}
            if counts:
                lines.append(f"{pad}     " + ", ".join(f"{k} {_number(v)}" for k, v in counts.items() if not isinstance(v, dict)))
        for parent in dict.fromkeys(p for r in refs for p in r.derived_from if p != dataset_hash):
            dataset_lines(parent, depth + 1)

    for depth, stage in enumerate(reversed(manifest.stages), start=1):
        pad = "  " * depth
        lines.append(f"{pad}└─ {stage.name}: weights {stage.weights_sha256}" + ("  (cache hit)" if stage.cache_hit else ""))
        lines.append(f"{pad}   config {stage.config_sha256}, DeepSpeed config {stage.deepspeed_config_sha256}")
        jobs = ", ".join(stage.job_ids) or "none recorded"
        lines.append(f"{pad}   {stage.scheduler} jobs {jobs}" + (f"; W&B runs {', '.join(stage.wandb_run_ids)}" if stage.wandb_run_ids else ""))
        lines.append(f"{pad}   trained on:")
        dataset_lines(stage.input_dataset_hash, depth + 2)
    for raw in manifest.raw_sources:
        if raw.dataset_hash not in seen:
            lines.append(f"  raw source {raw.dataset_hash}{_items(raw)} at {raw.location}")
    return "\n".join(lines)


_SHAPES = {"model": "doubleoctagon", "checkpoint": "box", "dataset": "cylinder", "caption": "note",
           "quality": "diamond", "code": "component"}
_COLOURS = {"model": "#f4c542", "checkpoint": "#9ecae1", "dataset": "#a1d99b", "caption": "#fdae6b",
            "quality": "#bcbddc", "code": "#d9d9d9"}


def format_lineage_dot(manifest: LineageManifest) -> str:
    """Graphviz ``dot`` source of the lineage graph; Graphviz lays it out (edges route around nodes)."""
    graph = build_lineage_graph(manifest)
    lines = [
        "digraph lineage {",
        "  rankdir=TB; splines=true; nodesep=0.35; ranksep=0.55;",
        f'  label="lineage of {manifest.ref}"; labelloc=t; fontname="Helvetica";',
        '  node [fontname="Helvetica", fontsize=10, style=filled];',
        '  edge [color="#555555", arrowsize=0.7];',
    ]
    for node in graph.nodes.values():
        label = node.label.replace("\\", "\\\\").replace('"', r"\"").replace("\n", r"\n")
        lines.append(f'  "{node.node_id}" [label="{label}", shape={_SHAPES[node.kind]}, fillcolor="{_COLOURS[node.kind]}"];')
    for source, target in graph.edges:
        lines.append(f'  "{source}" -> "{target}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


class GraphvizMissing(RuntimeError):
    """The ``dot`` program (Debian package ``graphviz``) is not installed."""


def render_lineage_image(manifest: LineageManifest, output_path: Path, image_format: Literal["png", "svg"] = "png") -> Path:
    """Lay the lineage graph out with Graphviz ``dot`` and write it as PNG or SVG; returns ``output_path``."""
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizMissing("the lineage picture needs Graphviz: apt-get install graphviz (or use --format dot)")
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([dot, f"-T{image_format}", "-o", str(output_path)], input=format_lineage_dot(manifest),
                   text=True, check=True, capture_output=True)
    return output_path


def summarize_lineage_markdown(manifest: LineageManifest) -> str:
    """A short markdown block for the evidence report and the Prefect lineage artifact."""
    rows = ["| step | content hash | details |", "|---|---|---|"]
    for dataset_hash, refs in _datasets_by_hash(manifest).items():
        rows.append(f"| {_roles(refs)} data | `{_short(dataset_hash)}` | {_items(refs[-1]).removeprefix(', ') or '-'} |")
    if manifest.caption:
        caption = manifest.caption.identity
        rows.append(
            f"| captions | `{_short(caption.weights_sha256)}` | {caption.backend} / {caption.model_id}, "
            f"prompt `{_short(caption.prompt_sha256)}` |"
        )
    if manifest.quality:
        quality = manifest.quality
        rows.append(
            f"| quality gate | `{_short(quality.dataset_hash)}` | {quality.suite_name} {quality.suite_version}: "
            f"{'passed' if quality.success else 'FAILED'} |"
        )
    for stage in manifest.stages:
        rows.append(
            f"| stage {stage.name} | `{_short(stage.weights_sha256)}` | config `{_short(stage.config_sha256)}`, "
            f"{stage.scheduler} jobs {', '.join(stage.job_ids) or '-'} |"
        )
    if manifest.weights:
        rows.append(f"| weights | `{_short(manifest.weights.sha256)}` | dvc md5 `{manifest.weights.dvc_md5}` |")
    rows.append(f"| code | `{_short(manifest.code_revision)}` | |")
    return "\n".join(rows)


__all__ = [
    "GraphvizMissing",
    "LineageGraph",
    "LineageNode",
    "build_lineage_graph",
    "format_lineage_dot",
    "format_lineage_text",
    "render_lineage_image",
    "summarize_lineage_markdown",
]
