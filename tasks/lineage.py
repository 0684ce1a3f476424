"""Lineage manifest per model version (design.md 3.9): every input and output by content hash.

A manifest is built by the retrain flow from what each step returned, committed into the registry
repository next to the version (``lineage/eve/<version>.json``), and published as a Prefect artifact.
Auditors query it both ways:

    eve lineage eve@v0.2.0                 # chain from the weights down to the raw source hashes
    eve lineage eve@v0.2.0 --format dot    # graphviz text; --format png draws it with matplotlib
    eve lineage --dataset <sha256>         # every model version that used that dataset

The graph is derived, not stored: nodes are the model version, the stage checkpoints, the datasets,
the caption run, the quality report and the code revision; edges point from an output to its inputs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

SCHEMA_VERSION = "eve-lineage/1"


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


class CaptionProvenance(BaseModel):
    """The teacher run that wrote the captions of the captioned dataset."""

    backend: str
    """Captioning backend, e.g. ``efficientnet-lite0-tags`` or ``llava-next``."""

    model_name: str
    """Teacher model name."""

    model_sha256: str
    """sha256 of the teacher weights."""

    prompt: str
    """Prompt template given to the teacher."""

    sampling: dict[str, Any] = Field(default_factory=dict)
    """Decoding parameters (temperature, max tokens, seed)."""

    output_dataset_hash: str | None = None
    """Hash of the dataset the run wrote."""

    @property
    def prompt_sha256(self) -> str:
        return hashlib.sha256(self.prompt.encode("utf-8")).hexdigest()


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

    parent_checkpoint_sha256: str | None = None
    """Checkpoint the stage started from (None for the first stage)."""

    checkpoint_sha256: str
    """Directory hash of the stage's final HF checkpoint."""

    checkpoint_location: str | None = None
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
    """Directory hash (see ``tasks.registry.directory_sha256``)."""

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

    schema_version: Literal["eve-lineage/1"] = SCHEMA_VERSION
    """Manifest format; bump on incompatible change."""

    model_name: str = "eve"
    """Registry artifact name."""

    version: str | None = None
    """Registry version (set at registration)."""

    created_at: str | None = None
    """UTC time of registration."""

    code_revision: str
    """Git revision of the platform code that trained the model."""

    raw_sources: list[DatasetRef]
    """Raw image source versions (``data.dvc``)."""

    datasets: list[DatasetRef] = Field(default_factory=list)
    """Derived versions: ingested, curated, captioned, filtered."""

    caption: CaptionProvenance | None = None
    """Teacher captioning run."""

    quality: QualityReportRef | None = None
    """Caption-quality gate result."""

    stages: list[StageRecord] = Field(default_factory=list)
    """Training stages in run order."""

    weights: WeightsRef | None = None
    """Registered weights (set at registration)."""

    evaluation: dict[str, Any] = Field(default_factory=dict)
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
    caption: CaptionProvenance | None = None,
    quality: QualityReportRef | None = None,
    stages: list[StageRecord] | None = None,
    evaluation: dict[str, Any] | None = None,
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
        stages=stages,
        evaluation=evaluation or {},
    )
    known_datasets = {d.dataset_hash for d in manifest.all_datasets()}
    known_checkpoints: set[str] = set()
    for stage in manifest.stages:
        if stage.input_dataset_hash not in known_datasets:
            raise ValueError(f"stage {stage.name!r} trained on dataset {stage.input_dataset_hash}, not in the lineage")
        if stage.parent_checkpoint_sha256 and stage.parent_checkpoint_sha256 not in known_checkpoints:
            raise ValueError(
                f"stage {stage.name!r} started from checkpoint {stage.parent_checkpoint_sha256}, "
                "which no earlier stage produced"
            )
        known_checkpoints.add(stage.checkpoint_sha256)
    for dataset in manifest.datasets:
        missing = [h for h in dataset.derived_from if h not in known_datasets]
        if missing:
            raise ValueError(f"{dataset.role} dataset {dataset.dataset_hash} derives from unknown {missing}")
    return manifest


# ---------------------------------------------------------------- storage in the registry repository


def lineage_path(registry_dir: Path, model_name: str, version: str) -> Path:
    return Path(registry_dir) / "lineage" / model_name / f"{version}.json"


def write_lineage(registry_dir: Path, manifest: LineageManifest) -> Path:
    """Write the manifest where the registry commits it; the caller commits."""
    if not manifest.version:
        raise ValueError("a lineage manifest is stored only once its registry version is known")
    target = lineage_path(registry_dir, manifest.model_name, manifest.version)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return target


def read_lineage(registry_dir: Path, reference: str) -> LineageManifest:
    """Manifest of ``eve@v0.2.0`` (or ``v0.2.0`` for the default model)."""
    model_name, _, version = reference.rpartition("@")
    model_name = model_name or "eve"
    path = lineage_path(registry_dir, model_name, version)
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.json")) if path.parent.exists() else []
        raise FileNotFoundError(f"no lineage for {model_name}@{version} in {registry_dir}; known versions: {known}")
    return LineageManifest.model_validate_json(path.read_text(encoding="utf-8"))


def iter_lineage(registry_dir: Path, model_name: str = "eve") -> list[LineageManifest]:
    folder = Path(registry_dir) / "lineage" / model_name
    return [LineageManifest.model_validate_json(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]


class DatasetUsage(BaseModel):
    """A model version that used a dataset, and how."""

    model_ref: str
    """``eve@vX``."""

    roles: list[str]
    """Where the dataset appears: dataset roles and ``stage:<name>`` for training inputs."""


def find_models_using_dataset(registry_dir: Path, dataset_hash: str, model_name: str = "eve") -> list[DatasetUsage]:
    """Every registered version whose lineage contains ``dataset_hash`` (a unique prefix of 8+ characters works)."""
    if len(dataset_hash) < 8:
        raise ValueError("give at least 8 characters of the dataset hash")

    def matches(candidate: str | None) -> bool:
        return bool(candidate) and candidate.startswith(dataset_hash)

    usages = []
    for manifest in iter_lineage(registry_dir, model_name):
        roles = [d.role for d in manifest.all_datasets() if matches(d.dataset_hash)]
        roles += [f"stage:{s.name}" for s in manifest.stages if matches(s.input_dataset_hash)]
        if manifest.quality and matches(manifest.quality.dataset_hash):
            roles.append("quality-gate")
        if roles:
            usages.append(DatasetUsage(model_ref=manifest.ref, roles=roles))
    return usages


# ---------------------------------------------------------------- the graph, as text, dot and a picture


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
        caption = manifest.caption
        caption_node = add(
            f"caption:{caption.model_sha256}:{caption.prompt_sha256}",
            "caption",
            f"captions by {caption.model_name} ({caption.backend})\nmodel {_short(caption.model_sha256)} "
            f"prompt {_short(caption.prompt_sha256)}",
        )
        link(f"dataset:{caption.output_dataset_hash}", caption_node)
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
            f"checkpoint:{stage.checkpoint_sha256}",
            "checkpoint",
            f"{stage.name} checkpoint {_short(stage.checkpoint_sha256)}\n"
            f"config {_short(stage.config_sha256)} jobs {','.join(stage.job_ids) or '-'}",
        )
        link(stage_node, f"dataset:{stage.input_dataset_hash}")
        if stage.parent_checkpoint_sha256:
            link(stage_node, f"checkpoint:{stage.parent_checkpoint_sha256}")
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
        lines.append(f"  evaluation {json.dumps(manifest.evaluation, sort_keys=True)}")
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
            caption = manifest.caption
            lines.append(
                f"{pad}   captions: {caption.backend} / {caption.model_name} model sha256 {caption.model_sha256} "
                f"prompt sha256 {caption.prompt_sha256} sampling {json.dumps(caption.sampling, sort_keys=True)}"
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
        lines.append(f"{pad}└─ stage {stage.name}: checkpoint sha256 {stage.checkpoint_sha256}")
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
        caption = manifest.caption
        rows.append(
            f"| captions | `{_short(caption.model_sha256)}` | {caption.backend} / {caption.model_name}, "
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
            f"| stage {stage.name} | `{_short(stage.checkpoint_sha256)}` | config `{_short(stage.config_sha256)}`, "
            f"{stage.scheduler} jobs {', '.join(stage.job_ids) or '-'} |"
        )
    if manifest.weights:
        rows.append(f"| weights | `{_short(manifest.weights.sha256)}` | dvc md5 `{manifest.weights.dvc_md5}` |")
    rows.append(f"| code | `{_short(manifest.code_revision)}` | |")
    return "\n".join(rows)


__all__ = [
    "SCHEMA_VERSION",
    "ApprovalRecord",
    "CaptionProvenance",
    "DatasetRef",
    "DatasetUsage",
    "LineageGraph",
    "LineageManifest",
    "QualityReportRef",
    "StageRecord",
    "WeightsRef",
    "build_lineage_graph",
    "build_lineage_manifest",
    "find_models_using_dataset",
    "format_lineage_dot",
    "format_lineage_text",
    "iter_lineage",
    "read_lineage",
    "render_lineage_png",
    "sha256_of_config",
    "summarize_lineage_markdown",
    "write_lineage",
]
