"""Re-caption diff between two captioned dataset versions (what auditors ask after a teacher change).

    diff = recaption_diff("/data/captioned-v2", "/data/captioned-v3")
    diff.num_caption_changed, diff.teacher_changes, diff.metric_deltas

Matches samples by key and answers what an auditor asks when a new teacher or prompt is used:
which images got new captions, which teacher/prompt wrote them before and after, and how the
caption statistics moved (the same statistics the quality gate reports).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from eve_model.shards import iter_samples, read_manifest
from tasks.quality.metrics import compute_caption_metrics, summarize_caption_metrics
from tasks.quality.report import MetricDelta, metric_deltas


class TeacherChange(BaseModel):
    """How many common samples moved from one (backend, model, prompt) to another."""

    before: str
    """``backend:model_id:prompt_template`` of the previous caption (or "none")."""
    after: str
    """Same for the current caption."""
    count: int
    """Samples with this change."""


class RecaptionDiff(BaseModel):
    """Per-sample and statistical differences between two captioned versions."""

    previous_dataset_hash: str
    """The older version."""
    current_dataset_hash: str
    """The newer version."""
    num_common: int
    """Keys in both versions."""
    num_added: int
    """Keys only in the current version."""
    num_removed: int
    """Keys only in the previous version."""
    num_caption_changed: int
    """Common keys whose caption text differs."""
    num_image_changed: int
    """Common keys whose image hash differs (the same key now names another image)."""
    teacher_changes: list[TeacherChange] = Field(default_factory=list)
    """Changes of teacher/prompt among common keys, most frequent first (unchanged pairs included)."""
    metric_deltas: list[MetricDelta] = Field(default_factory=list)
    """Caption statistics of the current version against the previous one."""
    changed_examples: list[dict[str, Any]] = Field(default_factory=list)
    """A few changed captions side by side, for reviewers."""


def _teacher(meta: dict[str, Any]) -> str:
    provenance = meta.get("caption_provenance") or {}
    if not provenance:
        return "none"
    return f"{provenance.get('backend')}:{provenance.get('model_id')}:{provenance.get('prompt_template')}"


def _captions(location: str | Path) -> dict[str, dict[str, Any]]:
    return {sample.key: sample.meta for sample in iter_samples(location)}


def recaption_diff(previous_location: str | Path, current_location: str | Path, max_examples: int = 5) -> RecaptionDiff:
    """Compare two captioned versions (see the module docstring)."""
    previous, current = _captions(previous_location), _captions(current_location)
    common = sorted(previous.keys() & current.keys())
    changed = [key for key in common if previous[key].get("caption") != current[key].get("caption")]
    teachers = Counter((_teacher(previous[key]), _teacher(current[key])) for key in common)

    def stats(metas: dict[str, dict[str, Any]]) -> dict[str, Any]:
        keys = list(metas)
        return summarize_caption_metrics(compute_caption_metrics(keys, [metas[k].get("caption") for k in keys]))

    return RecaptionDiff(
        previous_dataset_hash=read_manifest(previous_location).dataset_hash,
        current_dataset_hash=read_manifest(current_location).dataset_hash,
        num_common=len(common),
        num_added=len(current.keys() - previous.keys()),
        num_removed=len(previous.keys() - current.keys()),
        num_caption_changed=len(changed),
        num_image_changed=sum(
            1 for key in common if previous[key].get("image_sha256") != current[key].get("image_sha256")
        ),
        teacher_changes=[
            TeacherChange(before=before, after=after, count=count)
            for (before, after), count in teachers.most_common()
        ],
        metric_deltas=metric_deltas(stats(current), stats(previous)),
        changed_examples=[
            {"key": key, "before": previous[key].get("caption"), "after": current[key].get("caption")}
            for key in changed[:max_examples]
        ],
    )


__all__ = ["RecaptionDiff", "TeacherChange", "recaption_diff"]
