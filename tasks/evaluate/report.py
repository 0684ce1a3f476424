"""The evaluation report: a versioned JSON document, Prefect table artifacts and a PNG plot.

One ``EvaluationReport`` per evaluated model directory holds, per suite, the suite version, the
evaluation-set hash, every per-sample prediction with its scores, and the aggregate metrics, plus
the model directory's content hash and the seeds. Gates (``gates.py``) read only this document,
so a production model's stored report can be compared with a candidate's without the weights.

    report = EvaluationReport.load(path)
    report.metric("demo_vqa/accuracy")
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from eve_model.identity import weights_sha256
from tasks.publish import atomic_write_text, private_path

REPORT_SCHEMA_VERSION = 2
"""v2: ``weights_sha256`` (the platform's weights identity) replaces ``model_dir_hash``."""


class SampleRecord(BaseModel):
    """One scored evaluation sample."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    item_id: str
    prompt: str | None = None
    """The question shown to the model (None for captioning/perplexity without a question)."""
    prediction: str | None = None
    """The decoded greedy answer (None for perplexity items)."""
    references: list[str] = Field(default_factory=list)
    group: str | None = None
    """Question type / category / subtask."""
    scores: dict[str, float] = Field(default_factory=dict)
    """Per-sample scores; for names in ``SuiteResult.sample_metrics`` the suite metric is their
    ``weight``-weighted mean, which is what the paired bootstrap resamples."""
    weight: float = 1.0
    """Weight of this sample in weighted-mean metrics (token count for perplexity)."""


class SkippedRecord(BaseModel):
    source: str
    """``file:line`` (or dataset#key) of the invalid entry."""
    reason: str


class SuiteResult(BaseModel):
    """Results of one suite on one model."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    name: str
    """Suite name; metrics are addressed as ``<name>/<metric>``."""
    kind: str
    suite_version: str
    """Version of the scoring code for this kind; results of different versions are not comparable."""
    eval_set_hash: str
    """sha256 over the evaluation items (see ``readers.Benchmark.content_hash``)."""
    num_items: int
    skipped: list[SkippedRecord] = Field(default_factory=list)
    metrics: dict[str, float]
    higher_is_better: dict[str, bool]
    """Direction of every metric in ``metrics``."""
    sample_metrics: list[str] = Field(default_factory=list)
    """Metrics that are weighted means of per-sample scores (the ones the gate can bootstrap)."""
    samples: list[SampleRecord]
    settings: dict[str, Any] = Field(default_factory=dict)
    """Decoding and prompt settings used (template, max_new_tokens, batch size, prompt suffix)."""


class EvaluationReport(BaseModel):
    """Everything one evaluation run produced for one model directory."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    schema_version: int = REPORT_SCHEMA_VERSION
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    model_dir: str
    weights_sha256: str
    """``eve_model.identity.weights_sha256`` of the evaluated model."""
    seeds: dict[str, int] = Field(default_factory=dict)
    suites: dict[str, SuiteResult] = Field(default_factory=dict)

    def metric(self, key: str) -> float | None:
        """Value of ``<suite>/<metric>``, or None when that suite or metric is absent."""
        suite_name, _, metric_name = key.partition("/")
        suite = self.suites.get(suite_name)
        return suite.metrics.get(metric_name) if suite is not None else None

    def flat_metrics(self) -> dict[str, float]:
        return {
            f"{name}/{metric}": value
            for name, suite in self.suites.items()
            for metric, value in suite.metrics.items()
        }

    def lower_is_better(self) -> list[str]:
        """``<suite>/<metric>`` keys where a decrease is an improvement (e.g. perplexity)."""
        return sorted(
            f"{name}/{metric}"
            for name, suite in self.suites.items()
            for metric, higher in suite.higher_is_better.items()
            if not higher
        )

    def save(self, path: str | Path) -> Path:
        """Write atomically (temporary file + rename), so a reader never sees half a report."""
        return atomic_write_text(Path(path), self.model_dump_json(indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "EvaluationReport":
        payload = json.loads(Path(path).read_text())
        version = payload.get("schema_version")
        if version != REPORT_SCHEMA_VERSION:
            raise ValueError(
                f"{path}: evaluation report schema_version {version!r} is not supported "
                f"(this code reads version {REPORT_SCHEMA_VERSION})"
            )
        return cls.model_validate(payload)


def metric_table(
    candidate: EvaluationReport, production: EvaluationReport | None = None
) -> list[dict[str, Any]]:
    """Rows ``{metric, candidate, production, delta}`` for a Prefect table artifact."""
    rows = []
    reference = production.flat_metrics() if production is not None else {}
    for key, value in sorted(candidate.flat_metrics().items()):
        row: dict[str, Any] = {"metric": key, "candidate": round(value, 6)}
        if production is not None:
            base = reference.get(key)
            row["production"] = round(base, 6) if base is not None else None
            row["delta"] = round(value - base, 6) if base is not None else None
        rows.append(row)
    return rows


def sample_table(suite: SuiteResult, limit: int = 50) -> list[dict[str, Any]]:
    """The first ``limit`` per-sample predictions of a suite, for a table artifact."""
    return [
        {
            "item_id": s.item_id,
            "group": s.group,
            "prompt": (s.prompt or "")[:120],
            "prediction": (s.prediction or "")[:120],
            "references": " | ".join(s.references)[:120],
            **{k: round(v, 4) for k, v in s.scores.items()},
        }
        for s in suite.samples[:limit]
    ]


def publish_artifacts(
    candidate: EvaluationReport, production: EvaluationReport | None = None, key_prefix: str = "eval"
) -> None:
    """Publish the metric table and per-suite sample tables as Prefect artifacts.

    Call from inside a flow or task run (Prefect attaches artifacts to the current run).
    """
    from prefect.artifacts import create_table_artifact

    create_table_artifact(
        key=f"{key_prefix}-metrics",
        table=metric_table(candidate, production),
        description=f"Evaluation metrics of {candidate.model_dir} (model hash {candidate.weights_sha256[:12]})",
    )
    for name, suite in candidate.suites.items():
        if suite.samples and suite.samples[0].prediction is not None:
            # Artifact keys allow only lowercase letters, digits and dashes.
            safe = "".join(c if c.isalnum() else "-" for c in name.lower())
            create_table_artifact(
                key=f"{key_prefix}-{safe}-samples",
                table=sample_table(suite),
                description=f"First predictions of suite {name} ({suite.num_items} items, "
                f"{len(suite.skipped)} skipped)",
            )


def sample_generations(
    candidate: EvaluationReport, production: EvaluationReport | None = None, per_suite: int = 3
) -> list[dict[str, Any]]:
    """A few generations per suite, candidate next to production (the promotion page's
    ``SampleGeneration`` fields: image_key, prompt, candidate_output, production_output)."""
    rows = []
    for name, suite in candidate.suites.items():
        other = production.suites.get(name) if production is not None else None
        production_by_id = {s.item_id: s.prediction for s in other.samples} if other is not None else {}
        for sample in [s for s in suite.samples if s.prediction is not None][:per_suite]:
            rows.append({
                "image_key": f"{name}/{sample.item_id}",
                "prompt": sample.prompt or "",
                "candidate_output": sample.prediction,
                "production_output": production_by_id.get(sample.item_id),
            })
    return rows


def plot_metrics(
    candidate: EvaluationReport, path: str | Path, production: EvaluationReport | None = None
) -> Path:
    """Horizontal bar chart of every metric (candidate next to production when given) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on workers
    import matplotlib.pyplot as plt

    metrics = candidate.flat_metrics()
    reference = production.flat_metrics() if production is not None else {}
    keys = sorted(metrics)
    fig, axes = plt.subplots(
        len(keys), 1, figsize=(7, 0.7 * len(keys) + 1), squeeze=False, constrained_layout=True
    )
    for axis, key in zip(axes[:, 0], keys, strict=True):
        labels, values, colours = ["candidate"], [metrics[key]], ["tab:blue"]
        if key in reference:
            labels.append("production")
            values.append(reference[key])
            colours.append("tab:gray")
        axis.barh(labels, values, color=colours)
        axis.set_title(key, fontsize=8, loc="left")
        axis.tick_params(labelsize=7)
        for y, value in enumerate(values):
            axis.text(value, y, f" {value:.4g}", va="center", fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = private_path(path)  # two runs evaluating the same weights write the same file at once
    try:
        fig.savefig(temporary, dpi=100, format=path.suffix.lstrip(".") or "png")
        os.replace(temporary, path)
    finally:
        plt.close(fig)
        temporary.unlink(missing_ok=True)
    return path
