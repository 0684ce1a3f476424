"""Harness: suites scored end to end with a scripted model, then on a tiny random EVE directory."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tasks.evaluate import readers
from tasks.evaluate.harness import HarnessConfig, evaluate_model, evaluate_model_dir
from tasks.evaluate.report import EvaluationReport, metric_table, plot_metrics, sample_generations
from tasks.evaluate.suites import (
    CaptionSuite,
    LlavaVqaSuite,
    MmeSuite,
    PerplexitySuite,
    PopeSuite,
    VqaSuite,
)

FIXTURES = Path(__file__).parent / "fixtures"
QUIET = HarnessConfig(batch_size=3, max_new_tokens=4, show_progress=False)


class ScriptedModel:
    """Answers by the first key found in the prompt; records the batches it was given."""

    def __init__(self, answers: dict[str, str], nll: dict[str, tuple[float, int]] | None = None):
        self.answers, self.nll, self.batches = answers, nll or {}, []

    def generate(self, images, prompts, max_new_tokens, template):
        self.batches.append((len(prompts), sum(image is not None for image in images)))
        return [next((a for key, a in self.answers.items() if key in p), "unknown") for p in prompts]

    def text_nll(self, texts):
        return [self.nll[text] for text in texts]


def _model_dir(tmp_path: Path) -> Path:
    """A stand-in model directory for the scripted model: only hashed (it needs a weights file), never loaded."""
    import torch
    from safetensors.torch import save_file

    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model" / "config.json").write_text("{}")
    save_file({"weight": torch.zeros(1)}, str(tmp_path / "model" / "model.safetensors"))
    return tmp_path / "model"


def test_vqa_accuracy_overall_and_per_type(tmp_path):
    model = ScriptedModel({"color is the circle": "Red.", "What shape": "squares",
                           "How many": "two", "Where": "centre"})
    spec = VqaSuite(name="demo_vqa", path=FIXTURES / "vqa.jsonl")
    report = evaluate_model(model, _model_dir(tmp_path), [spec], QUIET)
    result = report.suites["demo_vqa"]
    # right: q1 ("Red." ~ red), q3 ("two" -> 2); wrong: q2 (squares != square), q4 (centre != center)
    assert result.metrics["accuracy"] == pytest.approx(2 / 4)
    assert result.metrics["accuracy_colour"] == 1.0 and result.metrics["accuracy_count"] == 1.0
    assert result.metrics["accuracy_shape"] == 0.0 and result.metrics["accuracy_position"] == 0.0
    assert [s.prediction for s in result.samples] == ["Red.", "squares", "two", "centre"]
    assert [s.scores["accuracy"] for s in result.samples] == [1.0, 0.0, 1.0, 0.0]
    assert model.batches == [(3, 3), (1, 1)]  # batched, every item with its image
    assert report.weights_sha256 and report.seeds == {"torch": 0}


def test_llava_soft_accuracy_pope_mme(tmp_path):
    model = ScriptedModel({
        "color is the circle": "red", "How many circles": "3", "Is this a square": "Yes",
        # POPE: q1 yes(right) q2,q4 "square"/"dog" -> see below; MME: first 4 chars decide
        "circle in the image": "Yes, there is.", "square in the image": "No, there is not.",
        "dog in the image": "Yes",
        "circle in this image": "Yes", "a square in this image": "No", "triangle in this image": "no",
        "two circles": "No", "three circles": "no", "one square": "yes", "two squares": "Yes",
    })
    suites = [
        LlavaVqaSuite(name="vqav2", question_file=FIXTURES / "llava_questions.jsonl",
                      answers_file=FIXTURES / "llava_answers.jsonl"),
        PopeSuite(name="pope", question_file=FIXTURES / "pope.jsonl"),
        MmeSuite(name="mme", root=FIXTURES / "mme"),
    ]
    report = evaluate_model(model, _model_dir(tmp_path), suites, QUIET)
    # VQA soft accuracy: 101 red (8 humans) -> 1; 102 "3" (2 humans) -> 2/3; 103 yes -> 1
    assert report.metric("vqav2/accuracy") == pytest.approx((1 + 2 / 3 + 1) / 3)
    # POPE labels yes,no,yes,no,yes; parsed yes,no,no,yes,yes -> TP 2, FP 1, TN 1, FN 1
    assert report.metric("pope/accuracy") == pytest.approx(3 / 5)
    assert report.metric("pope/precision") == pytest.approx(2 / 3)
    assert report.metric("pope/yes_ratio") == pytest.approx(3 / 5)
    # MME existence: 0001 yes/no right, 0002 square "No" (wrong) + triangle "no" (right)
    #   acc 3/4, acc+ 1/2 -> 125; count: 0003 "No" (wrong), "no" (right); 0004 yes (right), "Yes" (wrong)
    #   acc 2/4, acc+ 0 -> 50; perception = 175
    assert report.metric("mme/existence_score") == pytest.approx(125.0)
    assert report.metric("mme/count_score") == pytest.approx(50.0)
    assert report.metric("mme/perception_score") == pytest.approx(175.0)


def test_captions_and_perplexity(tmp_path):
    model = ScriptedModel({"caption": "a red circle on a white background"},
                          nll={"A red circle sits above a blue square.": (6.0, 3),
                               "The small green triangle is to the left of the star.": (2.0, 1)})
    suites = [CaptionSuite(name="captions", path=str(FIXTURES / "captions.jsonl")),
              PerplexitySuite(name="text", path=FIXTURES / "heldout_text.txt")]
    report = evaluate_model(model, _model_dir(tmp_path), suites, QUIET)
    captions = report.suites["captions"]
    assert captions.samples[0].scores["cider_d"] == pytest.approx(10.0)  # exact copy of its reference
    assert captions.samples[1].scores["cider_d"] == 0.0  # no shared word with its reference
    assert report.metric("captions/cider_d") == pytest.approx(5.0)
    # perplexity: exp((6 + 2) / (3 + 1)) = exp(2); token_nll is its log
    assert report.metric("text/perplexity") == pytest.approx(math.exp(2.0))
    assert report.metric("text/token_nll") == pytest.approx(2.0)
    assert [s.weight for s in report.suites["text"].samples] == [3.0, 1.0]


def test_bad_benchmark_fails_before_any_generation(tmp_path):
    broken = tmp_path / "vqa.jsonl"
    broken.write_text(FIXTURES.joinpath("vqa.jsonl").read_text().replace("images/", str(FIXTURES / "images") + "/")
                      + '{"question_id": "q5", "image": "missing.png", "question": "Q?", "answer": "a"}\n')
    model = ScriptedModel({})
    good = VqaSuite(name="good", path=FIXTURES / "vqa.jsonl")
    bad = VqaSuite(name="bad", path=broken)
    with pytest.raises(readers.BenchmarkFormatError, match=rf"{broken}:5: image not found"):
        evaluate_model(model, _model_dir(tmp_path), [good, bad], QUIET)
    assert model.batches == []
    skipping = VqaSuite(name="bad", path=broken, skip_invalid=True)
    report = evaluate_model(model, _model_dir(tmp_path), [skipping], QUIET)
    assert report.suites["bad"].num_items == 4
    assert [s.source for s in report.suites["bad"].skipped] == [f"{broken}:5"]


def test_tiny_random_eve_end_to_end(tiny_eve_checkpoint, tmp_path):
    suites = [
        VqaSuite(name="demo_vqa", path=FIXTURES / "vqa.jsonl"),
        PopeSuite(name="pope", question_file=FIXTURES / "pope.jsonl"),
        CaptionSuite(name="captions", path=str(FIXTURES / "captions.jsonl"), template="plain", prompt=""),
        PerplexitySuite(name="text", path=FIXTURES / "heldout_text.txt"),
    ]
    config = HarnessConfig(batch_size=4, max_new_tokens=6, show_progress=False)
    report = evaluate_model_dir(tiny_eve_checkpoint, suites, config)
    vqa = report.suites["demo_vqa"]
    assert 0.0 <= vqa.metrics["accuracy"] <= 1.0
    assert [s.item_id for s in vqa.samples] == ["q1", "q2", "q3", "q4"]
    assert all(isinstance(s.prediction, str) for s in vqa.samples)
    assert vqa.settings["max_new_tokens"] == 6 and vqa.suite_version == "vqa/1"
    assert 0.0 <= report.metric("pope/f1") <= 1.0
    assert report.metric("captions/cider_d") >= 0.0
    assert report.suites["captions"].settings["template"] == "plain"
    # A random model over the tiny tokenizer's vocabulary: perplexity is finite and large.
    assert 1.0 < report.metric("text/perplexity") < 1e6
    assert report.suites["text"].settings["num_tokens"] > 10

    # Greedy decoding is deterministic: a second run gives the same predictions and hash.
    again = evaluate_model_dir(tiny_eve_checkpoint, suites[:1], config)
    assert [s.prediction for s in again.suites["demo_vqa"].samples] == [s.prediction for s in vqa.samples]
    assert again.weights_sha256 == report.weights_sha256

    path = report.save(tmp_path / "report.json")
    loaded = EvaluationReport.load(path)
    assert loaded == report
    rows = metric_table(loaded, production=again)
    vqa_row = next(r for r in rows if r["metric"] == "demo_vqa/accuracy")
    assert vqa_row["delta"] == 0.0 and next(r for r in rows if r["metric"] == "pope/f1")["production"] is None
    shown = sample_generations(loaded, production=again, per_suite=2)
    assert [row["image_key"] for row in shown[:2]] == ["demo_vqa/q1", "demo_vqa/q2"]
    assert shown[0]["production_output"] == shown[0]["candidate_output"]  # same model, greedy
    assert all(row["production_output"] is None for row in shown if row["image_key"].startswith("pope/"))
    png = plot_metrics(loaded, tmp_path / "metrics.png", production=again)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        assert image.width > 300 and image.height > 300


def test_report_rejects_unknown_schema_version(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"schema_version": 99, "model_dir": "m", "weights_sha256": "h"}')
    with pytest.raises(ValueError, match="schema_version 99 is not supported"):
        EvaluationReport.load(path)


def _scene(size: int, colour: str, box: tuple[int, int, int, int]) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).ellipse(box, fill=colour)
    ImageDraw.Draw(image).rectangle((box[2] // 2, box[3] // 2, size - 5, size - 5), outline="black", width=3)
    return image


def test_teacher_embedder_flags_resized_copy():
    from tasks.evaluate.contamination import TrainingSample, check_contamination, teacher_embedder

    def png(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    original = _scene(140, "red", (10, 10, 70, 70))
    other = _scene(140, "blue", (60, 20, 130, 60))
    resized = original.resize((126, 126), Image.BILINEAR)  # a 0.9x copy: neither bytes nor pixels match
    report = check_contamination(
        [("eval/a", png(original)), ("eval/b", png(other))],
        [TrainingSample("train#resized", png(resized))],
        embed=teacher_embedder(),  # spatial EfficientNet-Lite0 features, threshold 0.85
    )
    assert [(m.eval_id, m.train_key) for m in report.near_duplicates] == [("eval/a", "train#resized")]
    assert report.exact_byte_matches == [] and report.exact_pixel_matches == []
