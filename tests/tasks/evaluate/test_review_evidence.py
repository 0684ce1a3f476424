"""What the reviewer reads a score against (answer baselines) and the samples they look at (with images)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest

from tasks.evaluate.baselines import MOST_COMMON_ANSWER, UNIFORM_CHANCE, answer_baselines
from tasks.evaluate.readers import EvalItem, read_vqa_jsonl
from tasks.evaluate.report import EvaluationReport, SampleRecord, SuiteResult
from tasks.evaluate.review_samples import review_samples
from tasks.evaluate.suites import PerplexitySuite, VqaSuite

FIXTURES = Path(__file__).parent / "fixtures"


def _item(item_id: str, group: str, *answers: str) -> EvalItem:
    return EvalItem(item_id=item_id, source="test", prompt="?", references=answers, group=group)


def test_baselines_are_what_answering_blind_scores_overall_and_per_type():
    items = [_item("c1", "colour", "red"), _item("c2", "colour", "red"), _item("c3", "colour", "blue"),
             _item("c4", "colour", "green"), _item("n1", "count", "2"), _item("n2", "count", "Two")]
    baselines = answer_baselines("vqa", items)
    colour, count = baselines.by_type["colour"], baselines.by_type["count"]
    assert (colour.uniform_chance, colour.majority_answer, colour.most_common_answer) == (pytest.approx(1 / 3), 0.5, "red")
    assert (count.uniform_chance, count.majority_answer) == (1.0, 1.0)  # "Two" normalises to "2"
    assert baselines.overall.majority_answer == pytest.approx((2 + 2) / 6)
    assert baselines.overall.uniform_chance == pytest.approx((4 / 3 + 2) / 6)
    by_metric = baselines.by_metric()
    assert by_metric["vqa/accuracy_colour"] == {UNIFORM_CHANCE: pytest.approx(1 / 3), MOST_COMMON_ANSWER: 0.5}
    assert set(by_metric) == {"vqa/accuracy", "vqa/accuracy_colour", "vqa/accuracy_count"}


def test_soft_accuracy_references_score_a_blind_guess_as_the_suite_would():
    # Three humans said "cat", one "dog": guessing "cat" scores 1, "dog" 1/3 (min(matches/3, 1)).
    baselines = answer_baselines("vqa", [_item("a", "animal", "cat", "cat", "cat", "dog"),
                                         _item("b", "animal", "dog", "dog", "dog")])
    animal = baselines.by_type["animal"]
    # "cat" and "dog" are each one item's first answer; the tie goes to the first seen, "cat".
    assert animal.most_common_answer == "cat" and animal.majority_answer == pytest.approx((1 + 0) / 2)
    assert animal.uniform_chance == pytest.approx(((1 + 1 / 3) / 2 + 1 / 2) / 2)


def _report(predictions: dict[str, str], weights: str) -> EvaluationReport:
    benchmark = read_vqa_jsonl(FIXTURES / "vqa.jsonl")
    samples = [SampleRecord(item_id=item.item_id, prompt=item.prompt, prediction=predictions[item.item_id],
                            references=list(item.references), group=item.group,
                            scores={"accuracy": float(predictions[item.item_id] == item.references[0])})
               for item in benchmark.items]
    suite = SuiteResult(name="demo_vqa", kind="vqa", suite_version="1", eval_set_hash=benchmark.content_hash,
                        num_items=len(samples), metrics={"accuracy": 0.5}, higher_is_better={"accuracy": True},
                        samples=samples)
    return EvaluationReport(model_dir="/m", weights_sha256=weights, suites={"demo_vqa": suite})


def test_review_samples_carry_the_image_the_right_answer_and_both_answers_disagreements_first():
    candidate = _report({"q1": "red", "q2": "circle", "q3": "2", "q4": "left"}, "c" * 64)
    production = _report({"q1": "blue", "q2": "circle", "q3": "2", "q4": "left"}, "p" * 64)
    suites = [VqaSuite(name="demo_vqa", path=FIXTURES / "vqa.jsonl"),
              PerplexitySuite(name="text", path=FIXTURES / "heldout_text.txt")]
    rows = review_samples(candidate, production, suites, per_group=1)
    assert [r["question_type"] for r in rows] == ["colour", "count", "position", "shape"]
    colour = rows[0]
    assert (colour["image_key"], colour["reference"], colour["candidate_output"], colour["production_output"]) == (
        "demo_vqa/q1", "red", "red", "blue")
    assert colour["candidate_score"] == 1.0
    from PIL import Image

    header, payload = colour["image_data_uri"].split(",", 1)
    assert header == "data:image/png;base64"
    with Image.open(io.BytesIO(base64.b64decode(payload))) as image:
        assert max(image.size) <= 160 and image.format == "PNG"
        assert image.convert("RGB").getpixel((image.width // 2, image.height // 2))[0] > 150  # the red circle
    assert len(review_samples(candidate, None, suites, per_group=1, max_samples=2)) == 2
