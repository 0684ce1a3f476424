"""Caption-gate profiles on real human-written captions (tests/fixtures/real_data, public domain).

The short-label profile must pass every legitimate label of a real set; the teacher-caption
profile must pass real full-sentence descriptions; each profile still catches the real defects
that the same sets contain (HTML entities, URLs, the same description on many drawings).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tasks.quality.config import CAPTION_PROFILE_DEFAULTS, CaptionGateThresholds
from tasks.quality.gate import gate_caption_dataset
from tests.tasks.quality.test_gate import write_dataset

FIXTURE = Path(__file__).parents[2] / "fixtures" / "real_data" / "openclipart_captions.jsonl"
RECORDS = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines()]

# Tux Paint stamp captions named by the issue: legitimate short labels.
TUXPAINT_LABELS = {"chicken_profile": "A chicken.", "chemparathi": "Hibiscus",
                   "A_filled": "The letter A.", "a_filled": "The letter a.",
                   "A_outline": "The letter A.", "a_outline": "The letter a."}

# What an author-written label or description must not contain to count as legitimate here:
# leaked markup or entities, URLs and e-mail addresses, ids made of letters and digits
# ("Tigre01", "bee1"), file-name underscores, and author credits instead of content.
NOT_A_LABEL = re.compile(r"&|<|>|https?:|www\.|@|_|\d|\bclipart\b|\bby\b|\.svg|\binkscape\b", re.IGNORECASE)


def key_of(path: str) -> str:
    """A shard sample key for a drawing's path."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", path)


def legitimate_labels() -> dict[str, str]:
    labels = {}
    for record in RECORDS:
        title = (record["title"] or "").strip()
        if title and not NOT_A_LABEL.search(title) and len(title.split()) <= 12:
            labels.setdefault(title, key_of(record["path"]))  # one drawing per label: a label set, not a duplicate test
    return {path: title for title, path in labels.items()}


def legitimate_descriptions() -> dict[str, str]:
    by_text: dict[str, list[str]] = {}
    for record in RECORDS:
        text = (record["description"] or "").strip()
        if 8 <= len(text.split()) and re.search(r"[.!?]$", text) and "..." not in text and not NOT_A_LABEL.search(text):
            by_text.setdefault(text, []).append(key_of(record["path"]))
    # A description shared by several drawings is a teacher-collapse signal for this profile, so the
    # legitimate set holds only descriptions written for one drawing.
    return {paths[0]: text for text, paths in by_text.items() if len(paths) == 1}


def test_fixture_is_a_real_set_of_useful_size() -> None:
    assert len(RECORDS) > 900
    assert len(legitimate_labels()) > 300 and len(legitimate_descriptions()) > 50


def test_short_label_profile_passes_every_legitimate_label(tmp_path, eve_home) -> None:
    labels = legitimate_labels() | {f"tuxpaint-{key}": text for key, text in TUXPAINT_LABELS.items()}
    source = write_dataset(tmp_path / "labels", labels)
    result = gate_caption_dataset(source, tmp_path / "out", CaptionGateThresholds(profile="short-labels"))
    assert result.passed, result.reasons
    assert result.counts.num_filtered == 0, Path(result.result_dir, "filtered.jsonl").read_text()[:2000]
    # "The letter A." on the filled and the outlined stamp: measured as a cross-image repeat, not a duplicate.
    assert result.summary["duplicate_rate"] == 0.0 and result.summary["cross_image_repeat_rate"] > 0
    assert result.profile == "short-labels"


def test_teacher_profile_rejects_labels_for_what_they_are(tmp_path, eve_home) -> None:
    source = write_dataset(tmp_path / "labels", {f"tuxpaint-{k}": v for k, v in TUXPAINT_LABELS.items()})
    result = gate_caption_dataset(source, tmp_path / "out", CaptionGateThresholds())
    assert not result.passed
    assert {reason.split(":")[0] for reason in result.reasons} >= {"mean_words", "filtered_fraction"}
    # "A chicken." and "Hibiscus" are too short for a teacher caption; the second "The letter A." and
    # "The letter a." describe other images (the outlined stamps): a teacher repeating itself.
    assert result.counts.filtered_by_reason == {"empty_or_too_short": 2, "cross_image_repeat": 2}


def test_teacher_profile_passes_real_full_sentence_descriptions(tmp_path, eve_home) -> None:
    descriptions = legitimate_descriptions()
    source = write_dataset(tmp_path / "descriptions", descriptions)
    result = gate_caption_dataset(source, tmp_path / "out", CaptionGateThresholds(profile="teacher-captions"))
    assert result.passed, result.reasons
    filtered = [json.loads(line) for line in Path(result.result_dir, "filtered.jsonl").read_text().splitlines()]
    # The only rule that may remove a legitimate human sentence is the teacher's boilerplate opening
    # ("This picture shows ..."), on purpose: for a teacher that opening is filler.
    assert {record["reason"] for record in filtered} <= {"boilerplate_opening"}
    assert len(filtered) <= 0.05 * len(descriptions)


def test_real_defects_are_caught(tmp_path, eve_home) -> None:
    """The same real set's defects: entities and URLs filtered in both profiles; one description
    on several drawings filtered for teacher captions, measured only for labels."""
    by_text: dict[str, list[str]] = {}
    for record in RECORDS:
        by_text.setdefault((record["description"] or "").strip(), []).append(key_of(record["path"]))
    shared = next(paths for text, paths in by_text.items() if text and len(paths) >= 3)
    entity = next(r for r in RECORDS if "&amp;" in (r["description"] or ""))
    url = next(r for r in RECORDS if "http://" in (r["description"] or ""))
    captions = {path: next(t for t, p in by_text.items() if p is shared) for path in shared}
    entity_key, url_key = key_of(entity["path"]), key_of(url["path"])
    captions |= {entity_key: entity["description"], url_key: url["description"]}
    captions |= dict(list(legitimate_descriptions().items())[:40])
    source = write_dataset(tmp_path / "mixed", captions)
    teacher = gate_caption_dataset(source, tmp_path / "teacher", CaptionGateThresholds())
    labels = gate_caption_dataset(source, tmp_path / "labels", CaptionGateThresholds(profile="short-labels"))
    for result in (teacher, labels):
        reasons = {json.loads(line)["key"]: json.loads(line)["reason"]
                   for line in Path(result.result_dir, "filtered.jsonl").read_text().splitlines()}
        assert reasons[entity_key] == "markup" and reasons[url_key] in {"url", "markup"}
    teacher_reasons = teacher.counts.filtered_by_reason
    assert teacher_reasons["cross_image_repeat"] == len(shared) - 1
    assert "cross_image_repeat" not in labels.counts.filtered_by_reason
    assert labels.summary["cross_image_repeat_rate"] == pytest.approx((len(shared) - 1) / len(captions))


def test_profiles_fill_only_what_is_not_given_and_overrides_are_reported() -> None:
    labels = CaptionGateThresholds(profile="short-labels", max_filtered_fraction=0.1)
    assert labels.min_words == 1 and labels.near_duplicate_jaccard is None and labels.max_filtered_fraction == 0.1
    assert labels.overrides() == {"max_filtered_fraction": (0.1, 0.2)}
    assert CaptionGateThresholds().model_dump() | {"profile": None} == (
        CAPTION_PROFILE_DEFAULTS["teacher-captions"] | {"profile": None})
    # A dumped config reloads to the same thresholds (flow parameters, config files).
    assert CaptionGateThresholds.model_validate(labels.model_dump()) == labels
    assert labels.fingerprint() != CaptionGateThresholds(profile="short-labels").fingerprint()
    with pytest.raises(ValueError, match="teacher-captions"):
        CaptionGateThresholds(profile="alt")
