"""The caption and instruction gates on real shard datasets: what is filtered, pass/fail, storage, deltas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eve_model.shards import DatasetIntegrityError, ShardSample, ShardWriter, iter_samples, read_manifest
from tasks.platform import PlatformSettings
from tasks.quality.config import CaptionGateThresholds
from tasks.quality.gate import gate_caption_dataset, gate_instruction_dataset
from tasks.quality.report import render_markdown

SUBJECTS = ["dog", "cat", "horse", "child", "cyclist", "sailboat", "tractor", "heron", "violinist", "fox"]
ACTIONS = ["rests", "waits", "stands", "moves slowly", "appears"]
PLACES = [
    "beside a frozen lake at dawn", "on a crowded city street", "inside a dim wooden barn",
    "near a rusty iron gate", "under tall pine trees",
]


def clean_captions(count: int) -> list[str]:
    """Distinct, well-formed captions (no two share more than one template slot)."""
    captions = []
    for index in range(count):
        subject = SUBJECTS[index % len(SUBJECTS)]
        action = ACTIONS[(index // len(SUBJECTS)) % len(ACTIONS)]
        place = PLACES[(index * 3 + index // len(SUBJECTS)) % len(PLACES)]
        captions.append(f"A {subject} number {index} {action} {place}.")
    return captions


PLANTED = {
    "repetitive": "A red bus on a road, a red bus on a road, a red bus on a road, a red bus on a road.",
    "truncated": "A small boat drifts slowly along the calm river toward the",
    "boilerplate": "The image shows a large crowd gathered in a stadium.",
    "markup": "A <b>yellow</b> kite flies above the open beach.",
    "url": "A vintage camera on a shelf, from www.example.com today.",
}
EXPECTED_REASON = {
    "repetitive": "repetitive_trigrams",
    "truncated": "incomplete_sentence",
    "boilerplate": "boilerplate_opening",
    "markup": "markup",
    "url": "url",
    "duplicate": "exact_duplicate",
    "other_image_same_text": "cross_image_repeat",
}


def write_dataset(path: Path, captions: dict[str, str | None], images: dict[str, bytes] | None = None,
                  **meta_extra) -> Path:
    """One sample per caption; its image bytes are its key unless ``images`` names other bytes."""
    with ShardWriter(path, max_items_per_shard=16) as writer:
        for key, caption in captions.items():
            image = (images or {}).get(key, key.encode())
            writer.write(ShardSample(key, {"caption": caption, **meta_extra}, image_bytes=image, image_ext="png"))
    return path


def planted_dataset(path: Path, num_clean: int = 40) -> tuple[Path, dict[str, str]]:
    """Clean captions, one of each planted defect, a repeated sample (same image and text as
    clean007) and clean008's text on another image (a teacher that repeats itself)."""
    clean = {f"clean{i:03d}": text for i, text in enumerate(clean_captions(num_clean))}
    bad = {f"bad_{name}": text for name, text in PLANTED.items()}
    bad["bad_duplicate"] = clean["clean007"]
    bad["bad_other_image_same_text"] = clean["clean008"]
    return write_dataset(path, clean | bad, images={"bad_duplicate": b"clean007"}), clean


def test_gate_filters_planted_captions_and_keeps_clean_ones(tmp_path, eve_home) -> None:
    source, clean = planted_dataset(tmp_path / "captioned")
    result = gate_caption_dataset(source, tmp_path / "filtered")

    assert result.passed, result.reasons
    stored = [json.loads(line) for line in Path(result.result_dir, "filtered.jsonl").read_text().splitlines()]
    assert {record["key"]: record["reason"] for record in stored} == {
        f"bad_{name}": reason for name, reason in EXPECTED_REASON.items()
    }
    counts = result.counts
    assert (counts.num_input, counts.num_kept, counts.num_filtered) == (47, 40, 7)
    assert counts.num_input == counts.num_kept + counts.num_filtered == len(clean) + len(EXPECTED_REASON)
    assert sum(counts.filtered_by_reason.values()) == counts.num_filtered

    kept = list(iter_samples(tmp_path / "filtered"))
    assert [sample.key for sample in kept] == sorted(clean)
    assert all(sample.image_bytes == sample.key.encode() and sample.caption == clean[sample.key] for sample in kept)
    manifest = read_manifest(tmp_path / "filtered")
    assert manifest.dataset_hash == result.output_dataset_hash
    assert manifest.extra["quality_gate"]["input_dataset_hash"] == read_manifest(source).dataset_hash

    # Stored under the home, keyed by dataset hash and suite version, with GX's own result JSON.
    result_dir = Path(result.result_dir)
    assert result_dir.is_relative_to(PlatformSettings.load().home / "quality" / result.input_dataset_hash)
    assert f"v{result.suite_version}-t{result.thresholds_fingerprint}" == result_dir.name
    gx_json = json.loads((result_dir / "gx_validation_result.json").read_text())
    assert gx_json["statistics"]["evaluated_expectations"] == len(gx_json["results"]) >= 12

    # Rerun with the same suite reuses the written version instead of refusing or duplicating it.
    again = gate_caption_dataset(source, tmp_path / "filtered")
    assert again.output_dataset_hash == result.output_dataset_hash


def test_version_with_too_many_bad_captions_fails_with_reasons_and_deltas(tmp_path, eve_home) -> None:
    first_source, _ = planted_dataset(tmp_path / "v1")
    first = gate_caption_dataset(first_source, tmp_path / "v1-filtered")

    clean = {f"c{i:03d}": text for i, text in enumerate(clean_captions(20))}
    copies = {f"dup{i:03d}": text for i, text in enumerate(clean_captions(8))}  # 8 repeated samples
    truncated = {f"cut{i:03d}": f"A lonely lighthouse number {i} stands on the" for i in range(4)}
    same_images = {f"dup{i:03d}": f"c{i:03d}".encode() for i in range(8)}
    second_source = write_dataset(tmp_path / "v2", clean | copies | truncated, images=same_images)
    second = gate_caption_dataset(second_source, tmp_path / "v2-filtered")

    assert not second.passed
    failed_rules = {reason.split(":")[0] for reason in second.reasons}
    assert failed_rules == {"duplicate_rate", "filtered_fraction"}
    assert second.output_dataset_hash is None and not (tmp_path / "v2-filtered" / "manifest.json").exists()
    assert second.counts.filtered_by_reason == {"exact_duplicate": 8, "incomplete_sentence": 4}
    assert second.counts.num_kept == 20

    # Deltas compare with the previously gated version, metric by metric.
    assert second.previous_dataset_hash == first.input_dataset_hash
    deltas = {delta.metric: delta for delta in second.deltas}
    assert deltas["duplicate_rate"].current == pytest.approx(8 / 32)
    assert deltas["duplicate_rate"].previous == pytest.approx(1 / 47)
    assert deltas["duplicate_rate"].absolute_change == pytest.approx(8 / 32 - 1 / 47)
    report = render_markdown(second)
    assert "FAILED" in report and "32 in = 20 kept + 12 filtered" in report and "duplicate_rate" in report


def test_thresholds_are_parameters(tmp_path, eve_home) -> None:
    source, _ = planted_dataset(tmp_path / "captioned")
    strict = CaptionGateThresholds(max_filtered_fraction=0.05)
    result = gate_caption_dataset(source, tmp_path / "filtered", strict)
    assert not result.passed and result.reasons[0].startswith("filtered_fraction")
    lenient = CaptionGateThresholds(filter_boilerplate_openings=False)
    assert lenient.fingerprint() != strict.fingerprint()
    relaxed = gate_caption_dataset(source, tmp_path / "filtered-lenient", lenient)
    assert relaxed.passed and "boilerplate_opening" not in relaxed.counts.filtered_by_reason
    assert relaxed.counts.num_kept == 41


def test_output_directory_holding_another_dataset_is_refused(tmp_path, eve_home) -> None:
    source, _ = planted_dataset(tmp_path / "captioned")
    other = write_dataset(tmp_path / "other", {"x": "A different dataset entirely."})
    with pytest.raises(DatasetIntegrityError, match="not this gate's output"):
        gate_caption_dataset(source, other)


def conversation(question: str, answer: str, image: bool = True) -> list[dict[str, str]]:
    prefix = "<image>\n" if image else ""
    return [{"from": "human", "value": prefix + question}, {"from": "gpt", "value": answer}]


def test_instruction_gate_catches_bad_conversations(tmp_path, eve_home) -> None:
    good = {f"good{i:02d}": conversation(f"What is object {i}?", f"It is object {i}.") for i in range(30)}
    bad = {
        "bad_two_images": [{"from": "human", "value": "<image>\n<image>\nCompare?"}, {"from": "gpt", "value": "Same."}],
        "bad_no_image": conversation("What is shown?", "A cat.", image=False),
        "bad_order": [{"from": "gpt", "value": "Hello."}, {"from": "human", "value": "<image>\nHi?"}],
        "bad_empty": conversation("Describe it.", ""),
        "bad_repeated": conversation("Q?", "A.") + conversation("Q?", "A.", image=False)[:1]
        + [{"from": "gpt", "value": "A."}],
        "bad_missing": None,
    }
    path = tmp_path / "sft"
    with ShardWriter(path, max_items_per_shard=8) as writer:
        for key, turns in (good | bad).items():
            writer.write(ShardSample(key, {"caption": None, "conversations": turns}, b"img", "png"))
    result = gate_instruction_dataset(path, tmp_path / "sft-filtered")
    reasons = {
        record["key"]: record["reason"]
        for record in map(json.loads, Path(result.result_dir, "filtered.jsonl").read_text().splitlines())
    }
    assert reasons == {
        "bad_two_images": "image_placeholder_count",
        "bad_no_image": "image_placeholder_count",
        "bad_order": "roles_not_alternating",
        "bad_empty": "empty_turn",
        "bad_repeated": "repeated_turn",
        "bad_missing": "malformed_conversation",
    }
    assert not result.passed  # 6 of 36 filtered > 10 %
    assert result.counts.num_input == result.counts.num_kept + result.counts.num_filtered == 36


def test_gx_validates_only_the_rule_columns_with_the_verdicts_of_the_whole_table(monkeypatch) -> None:
    """GX reads the rule columns only (its batch fingerprint hashed every caption's text), and lists
    the unexpected rows by index, not by value: the decision is the one on the whole table."""
    import tasks.quality.validate as validate
    from tasks.quality.metrics import compute_caption_metrics
    from tasks.quality.suites import build_caption_suite

    captions = clean_captions(60) + list(PLANTED.values()) + clean_captions(5)
    table = compute_caption_metrics([f"k{i}" for i in range(len(captions))], captions,
                                    image_ids=[f"img{i % 62}" for i in range(len(captions))])
    suite = build_caption_suite(CaptionGateThresholds())
    frame = validate.validation_frame(table, suite)
    assert list(frame.columns) == validate.suite_columns(suite)
    assert {"caption", "key", "text_hash"}.isdisjoint(frame.columns) and len(frame) == len(table)
    pruned = validate.decide(table, suite, 0.2)
    with monkeypatch.context() as patch:
        patch.setattr(validate, "validation_frame", lambda whole, _suite: whole.reset_index(drop=True))
        whole = validate.decide(table, suite, 0.2)
    assert pruned.filtered_reason.equals(whole.filtered_reason) and pruned.passed == whole.passed
    assert [(r.rule, r.success, r.unexpected_count, r.observed_value) for r in pruned.rules] == \
        [(r.rule, r.success, r.unexpected_count, r.observed_value) for r in whole.rules]
    assert pruned.filtered_reason.notna().sum() >= len(PLANTED)
    row_results = [r["result"] for r in pruned.gx_result["results"] if "unexpected_index_list" in r["result"]]
    assert row_results and all("unexpected_list" not in result for result in row_results)
