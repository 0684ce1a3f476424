"""The sample answers a reviewer sees: the image itself, the question, the right answer, and what the
candidate and the production model answered.

Per question type of each image suite, up to ``per_group`` questions, the telling ones first: where
the candidate and production disagree, then where the candidate is wrong, then right ones (ties by
question id, so the choice is reproducible). Each image travels as a small PNG ``data:`` URI (fitted
into ``thumbnail_px`` pixels), so the review form shows it without any file server and the evidence
hash covers exactly what the reviewer saw.
"""

from __future__ import annotations

import base64
import io
from collections import defaultdict
from typing import Any

from tasks.evaluate.readers import EvalItem
from tasks.evaluate.report import EvaluationReport, SampleRecord
from tasks.evaluate.suites import SuiteSpec, load_benchmark

THUMBNAIL_PX = 160
"""Longest side of a sample image in the review form."""


def image_data_uri(image_bytes: bytes, thumbnail_px: int = THUMBNAIL_PX) -> str | None:
    """A PNG ``data:`` URI of the image fitted into ``thumbnail_px``; None when it does not decode."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(image_bytes)) as image:
            image = image.convert("RGB")
            image.thumbnail((thumbnail_px, thumbnail_px))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", optimize=True)
    except Exception:  # noqa: BLE001 - an undecodable image is shown as missing, not an error
        return None
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _score(sample: SampleRecord) -> float | None:
    return sample.scores.get("accuracy", next(iter(sample.scores.values()), None))


def _telling_first(sample: SampleRecord, production_answer: str | None) -> tuple[int, str]:
    disagree = production_answer is not None and production_answer != sample.prediction
    wrong = (_score(sample) or 0.0) < 1.0
    return (0 if disagree else 1 if wrong else 2), sample.item_id


def review_samples(
    candidate: EvaluationReport,
    production: EvaluationReport | None,
    suites: list[SuiteSpec],
    per_group: int = 2,
    max_samples: int = 8,
    thumbnail_px: int = THUMBNAIL_PX,
) -> list[dict[str, Any]]:
    """Rows for the review form (``tasks.promotion.SampleGeneration`` fields): image_key, prompt,
    candidate_output, production_output, reference, question_type, candidate_score, image_data_uri."""
    rows: list[dict[str, Any]] = []
    for spec in suites:
        suite = candidate.suites.get(spec.name)
        if suite is None:
            continue
        items: dict[str, EvalItem] = {item.item_id: item for item in load_benchmark(spec).items}
        if not any(item.image_path is not None or item.image_bytes is not None for item in items.values()):
            continue  # a text-only suite: nothing to look at
        other = production.suites.get(spec.name) if production is not None else None
        production_answers = {s.item_id: s.prediction for s in other.samples} if other is not None else {}
        by_group: dict[str, list[SampleRecord]] = defaultdict(list)
        for sample in suite.samples:
            if sample.prediction is not None and sample.item_id in items:
                by_group[sample.group or "all"].append(sample)
        for group in sorted(by_group):
            chosen = sorted(by_group[group], key=lambda s: _telling_first(s, production_answers.get(s.item_id)))
            for sample in chosen[:per_group]:
                item = items[sample.item_id]
                image = item.read_image_bytes()
                rows.append({
                    "image_key": f"{spec.name}/{sample.item_id}",
                    "prompt": sample.prompt or item.prompt or "",
                    "candidate_output": sample.prediction,
                    "production_output": production_answers.get(sample.item_id),
                    "reference": item.references[0] if item.references else None,
                    "question_type": sample.group,
                    "candidate_score": _score(sample),
                    "image_data_uri": image_data_uri(image, thumbnail_px) if image else None,
                })
    return rows[:max_samples]


__all__ = ["THUMBNAIL_PX", "image_data_uri", "review_samples"]
