"""Lineage for people: the derived graph (nodes are the model version, stage checkpoints, datasets,
the caption run, the quality report and the code revision; edges point from an output to its
inputs), as an indented text tree, Graphviz dot, a picture, and a markdown summary."""

from __future__ import annotations

import json
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

    for dataset in manifest.all_datasets():
        add(
            f"dataset:{dataset.dataset_hash}",
            "dataset",
            f"{dataset.role} dataset {_short(dataset.dataset_hash)}\n{dataset.num_items} items",
        )
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


def format_lineage_text(manifest: LineageManifest) -> str:
    """The chain as an indented tree, from the weights down to the raw source hashes, with full hashes."""
    lines = [f"{manifest.ref}  (lineage {manifest.schema_version}, code {manifest.code_revision})"]
    if manifest.weights:
        lines.append(f"  weights sha256 {manifest.weights.sha256}  dvc md5 {manifest.weights.dvc_md5}")
    for approval in manifest.approvals:
        lines.append(
            f"  {approval.decision}d by {approval.reviewer} at {approval.decided_at}: {approval.comment!r} "
            f"(evidence sha256 {approval.evidence_sha256})"
        )
    if manifest.evaluation:
        lines.append(f"  evaluation {json.dumps(manifest.evaluation.model_dump(mode='json'), sort_keys=True)}")
    # Several roles can hold the same bytes (a gate that dropped nothing outputs its input): one node
    # per hash, named by all its roles, whose parents are the union of theirs (minus itself).
    datasets: dict[str, list[DatasetRef]] = {}
    for ref in manifest.all_datasets():
        datasets.setdefault(ref.dataset_hash, []).append(ref)
    seen: set[str] = set()

    def dataset_lines(dataset_hash: str, depth: int) -> None:
        pad = "  " * depth
        refs = datasets.get(dataset_hash)
        if not refs:
            lines.append(f"{pad}└─ dataset {dataset_hash} (not described in this manifest)")
            return
        dataset = refs[-1]
        roles = " = ".join(dict.fromkeys(ref.role for ref in reversed(refs)))
        lines.append(
            f"{pad}└─ {roles} dataset {dataset.dataset_hash}  {dataset.num_items} items  {dataset.location}"
        )
        if dataset_hash in seen:
            return
        seen.add(dataset_hash)
        if manifest.caption and manifest.caption.output_dataset_hash == dataset_hash:
            caption = manifest.caption.identity
            lines.append(
                f"{pad}   captions: {caption.backend} / {caption.model_id} model sha256 {caption.weights_sha256} "
                f"prompt sha256 {caption.prompt_sha256} decoding {json.dumps(caption.decoding, sort_keys=True)}"
            )
        if manifest.quality and manifest.quality.dataset_hash == dataset_hash:
            quality = manifest.quality
            lines.append(
                f"{pad}   quality gate: {quality.suite_name} {quality.suite_version} "
                f"{'passed' if quality.success else 'FAILED'} {json.dumps(quality.statistics, sort_keys=True)}"
            )
        for parent in dict.fromkeys(p for ref in refs for p in ref.derived_from if p != dataset_hash):
            dataset_lines(parent, depth + 1)

    for depth, stage in enumerate(reversed(manifest.stages), start=1):
        pad = "  " * depth
        lines.append(f"{pad}└─ stage {stage.name}: weights sha256 {stage.weights_sha256}")
        lines.append(
            f"{pad}   config sha256 {stage.config_sha256}  deepspeed sha256 {stage.deepspeed_config_sha256}  "
            f"{stage.scheduler} jobs {stage.job_ids}  wandb {stage.wandb_run_ids}"
            + ("  (cache hit)" if stage.cache_hit else "")
        )
        lines.append(f"{pad}   trained on:")
        dataset_lines(stage.input_dataset_hash, depth + 2)
    unreached = [d for d in manifest.raw_sources if d.dataset_hash not in seen]
    for raw in unreached:
        lines.append(f"  raw source {raw.dataset_hash}  {raw.num_items} items  {raw.location}")
    return "\n".join(lines)


def format_lineage_dot(manifest: LineageManifest) -> str:
    """Graphviz ``dot`` text of the lineage graph (render elsewhere with ``dot -Tsvg``)."""
    graph = build_lineage_graph(manifest)
    shapes = {
        "model": "doubleoctagon",
        "checkpoint": "box",
        "dataset": "cylinder",
        "caption": "note",
        "quality": "diamond",
        "code": "component",
    }
    lines = ["digraph lineage {", "  rankdir=TB;", '  node [fontname="Helvetica", fontsize=10];']
    for node in graph.nodes.values():
        label = node.label.replace('"', r"\"").replace("\n", r"\n")
        lines.append(f'  "{node.node_id}" [label="{label}", shape={shapes[node.kind]}];')
    for source, target in graph.edges:
        lines.append(f'  "{source}" -> "{target}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _node_depths(graph: LineageGraph) -> dict[str, int]:
    """Longest distance from the root, so every edge points downwards in the picture."""
    depths = {graph.root: 0}
    for _ in range(len(graph.nodes)):
        changed = False
        for source, target in graph.edges:
            if source in depths and depths.get(target, -1) < depths[source] + 1:
                depths[target] = depths[source] + 1
                changed = True
        if not changed:
            break
    for node_id in graph.nodes:
        depths.setdefault(node_id, max(depths.values()) + 1)
    return depths


def render_lineage_png(manifest: LineageManifest, output_path: Path) -> Path:
    """Draw the lineage graph with matplotlib (no graphviz binary needed); returns ``output_path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    graph = build_lineage_graph(manifest)
    depths = _node_depths(graph)
    rows: dict[int, list[str]] = {}
    for node_id in graph.nodes:
        rows.setdefault(depths[node_id], []).append(node_id)
    width = max(len(r) for r in rows.values())
    positions = {
        node_id: ((index + 0.5) / len(row) * width, -depth)
        for depth, row in rows.items()
        for index, node_id in enumerate(row)
    }
    colours = {
        "model": "#f4c542",
        "checkpoint": "#9ecae1",
        "dataset": "#a1d99b",
        "caption": "#fdae6b",
        "quality": "#bcbddc",
        "code": "#d9d9d9",
    }
    figure, axes = plt.subplots(figsize=(max(6, 3.2 * width), max(4, 1.4 * len(rows))))
    for source, target in graph.edges:
        (x0, y0), (x1, y1) = positions[source], positions[target]
        axes.annotate(
            "", xy=(x1, y1 + 0.18), xytext=(x0, y0 - 0.18), arrowprops={"arrowstyle": "->", "color": "#555555"}
        )
    for node_id, (x, y) in positions.items():
        node = graph.nodes[node_id]
        axes.text(
            x,
            y,
            node.label,
            ha="center",
            va="center",
            fontsize=7,
            bbox={"boxstyle": "round,pad=0.4", "facecolor": colours[node.kind], "edgecolor": "#333333"},
        )
    axes.set_xlim(-0.2, width + 0.2)
    axes.set_ylim(-max(rows) - 0.6, 0.6)
    axes.axis("off")
    axes.set_title(f"lineage of {manifest.ref}")
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output_path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    return output_path


def summarize_lineage_markdown(manifest: LineageManifest) -> str:
    """A short markdown block for the evidence report and the Prefect lineage artifact."""
    rows = ["| step | content hash | details |", "|---|---|---|"]
    for dataset in manifest.all_datasets():
        rows.append(f"| {dataset.role} data | `{_short(dataset.dataset_hash)}` | {dataset.num_items} items |")
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
    "LineageGraph",
    "LineageNode",
    "build_lineage_graph",
    "format_lineage_dot",
    "format_lineage_text",
    "render_lineage_png",
    "summarize_lineage_markdown",
]
