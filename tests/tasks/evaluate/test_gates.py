"""Gate decisions: better passes, worse fails, tie within noise passes, contamination fails."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.evaluate.contamination import ContaminationReport, ImageMatch
from tasks.evaluate.gates import (
    GatePolicy,
    MetricThreshold,
    NonRegressionRule,
    decide_gate,
    paired_bootstrap,
)
from tasks.evaluate.report import EvaluationReport, SampleRecord, SuiteResult

N = 400


def _report(correct: np.ndarray, nll: np.ndarray | None = None, model_hash: str = "c" * 64,
            eval_set_hash: str = "e" * 64) -> EvaluationReport:
    """A report with a VQA suite (per-sample 0/1 accuracy) and optionally a perplexity suite."""
    vqa = SuiteResult(
        name="vqa", kind="vqa", suite_version="vqa/1", eval_set_hash=eval_set_hash, num_items=len(correct),
        metrics={"accuracy": float(np.mean(correct))}, higher_is_better={"accuracy": True},
        sample_metrics=["accuracy"],
        samples=[SampleRecord(item_id=f"q{i}", prediction="x", scores={"accuracy": float(c)})
                 for i, c in enumerate(correct)],
    )
    suites = {"vqa": vqa}
    if nll is not None:
        suites["text"] = SuiteResult(
            name="text", kind="perplexity", suite_version="perplexity/1", eval_set_hash="t" * 64,
            num_items=len(nll), metrics={"token_nll": float(np.mean(nll)), "perplexity": math.exp(np.mean(nll))},
            higher_is_better={"token_nll": False, "perplexity": False}, sample_metrics=["token_nll"],
            samples=[SampleRecord(item_id=f"d{i}", scores={"token_nll": float(v)}, weight=1.0)
                     for i, v in enumerate(nll)],
        )
    return EvaluationReport(model_dir="/m", weights_sha256=model_hash, suites=suites)


@pytest.fixture
def production_correct() -> np.ndarray:
    return (np.random.default_rng(7).random(N) < 0.6).astype(float)  # ~60% accuracy


def _flip(correct: np.ndarray, right_to_wrong: int, wrong_to_right: int) -> np.ndarray:
    out = correct.copy()
    out[np.flatnonzero(correct == 1)[:right_to_wrong]] = 0
    out[np.flatnonzero(correct == 0)[:wrong_to_right]] = 1
    return out


POLICY = GatePolicy(
    thresholds=[MetricThreshold(metric="vqa/accuracy", minimum=0.3)],
    non_regression=[NonRegressionRule(metric="vqa/accuracy", tolerance=0.02)],
    aggregate_tolerance=0.01,
)


def test_better_candidate_passes(production_correct):
    candidate = _flip(production_correct, 0, 40)  # +40/400 = +0.10
    decision = decide_gate(_report(candidate), POLICY, production=_report(production_correct, model_hash="p" * 64))
    assert decision.passed, decision.to_markdown()
    check = next(c for c in decision.checks if c.rule == "non_regression")
    assert check.delta == pytest.approx(40 / N)
    assert check.ci_low > 0  # strictly better: every changed pair moved up


def test_worse_candidate_fails(production_correct):
    candidate = _flip(production_correct, 40, 0)  # -0.10, far beyond the 0.02 tolerance
    decision = decide_gate(_report(candidate), POLICY, production=_report(production_correct))
    assert not decision.passed
    failed = {c.rule for c in decision.failures}
    assert failed == {"non_regression", "aggregate"}
    check = next(c for c in decision.checks if c.rule == "non_regression")
    assert check.delta == pytest.approx(-40 / N)
    assert check.ci_high < -0.02
    assert "lies entirely below" in check.reason


def test_tie_within_noise_passes(production_correct):
    candidate = _flip(production_correct, 15, 15)  # same accuracy, 30 answers changed
    decision = decide_gate(_report(candidate), POLICY, production=_report(production_correct))
    assert decision.passed, decision.to_markdown()
    check = next(c for c in decision.checks if c.rule == "non_regression")
    assert check.delta == 0.0
    assert check.ci_low < 0 < check.ci_high


def test_small_regression_within_noise_passes_but_aggregate_can_fail(production_correct):
    candidate = _flip(production_correct, 8, 0)  # -0.02: CI reaches above -0.02, so not "surely worse"
    decision = decide_gate(_report(candidate), POLICY, production=_report(production_correct))
    regression = next(c for c in decision.checks if c.rule == "non_regression")
    assert regression.passed and regression.ci_high >= -0.02
    aggregate = next(c for c in decision.checks if c.rule == "aggregate")
    assert not aggregate.passed  # mean delta -0.02 < -aggregate_tolerance (-0.01)
    assert not decision.passed


def test_lower_is_better_metric_is_oriented(production_correct):
    nll = np.random.default_rng(1).uniform(1.0, 3.0, size=200)
    policy = GatePolicy(non_regression=[NonRegressionRule(metric="text/token_nll", tolerance=0.05)],
                        aggregate_tolerance=None)
    production = _report(production_correct, nll)
    better = decide_gate(_report(production_correct, nll - 0.5), policy, production=production)
    worse = decide_gate(_report(production_correct, nll + 0.5), policy, production=production)
    assert better.passed and better.checks[0].delta == pytest.approx(0.5)
    assert not worse.passed and worse.checks[0].delta == pytest.approx(-0.5)


def test_threshold_and_first_promotion(production_correct):
    low = _flip(production_correct, int(production_correct.sum()) - 40, 0)  # 40/400 = 0.1 accuracy
    decision = decide_gate(_report(low), POLICY)  # no production model
    assert not decision.passed
    [failure] = decision.failures
    assert failure.rule == "threshold" and failure.candidate == pytest.approx(0.1) and failure.limit == 0.3
    assert all(c.passed for c in decision.checks if c.rule == "non_regression")
    assert decide_gate(_report(production_correct), POLICY).passed
    missing = decide_gate(_report(production_correct), GatePolicy(thresholds=[MetricThreshold(metric="pope/f1", minimum=0.5)]))
    assert not missing.passed and "missing" in missing.failures[0].reason


def test_changed_eval_set_is_not_comparable(production_correct):
    decision = decide_gate(_report(production_correct), POLICY,
                           production=_report(production_correct, eval_set_hash="f" * 64))
    assert not decision.passed
    assert "not comparable" in next(c for c in decision.failures if c.rule == "non_regression").reason


def test_contaminated_evaluation_set_fails(production_correct):
    contamination = ContaminationReport(
        num_eval_images=10, num_train_images=100,
        exact_pixel_matches=[ImageMatch(eval_id="vqa/q3", train_key="train#k9")],
    )
    decision = decide_gate(_report(production_correct), POLICY, contamination=contamination)
    assert not decision.passed
    [failure] = decision.failures
    assert failure.rule == "contamination" and failure.candidate == 1.0
    clean = ContaminationReport(num_eval_images=10, num_train_images=100)
    assert decide_gate(_report(production_correct), POLICY, contamination=clean).passed


def test_bootstrap_reproducible_with_seed(production_correct):
    candidate = _flip(production_correct, 10, 20)
    first = paired_bootstrap(candidate, production_correct, seed=3, resamples=500)
    again = paired_bootstrap(candidate, production_correct, seed=3, resamples=500)
    other = paired_bootstrap(candidate, production_correct, seed=4, resamples=500)
    assert first == again
    assert (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)


def test_bootstrap_interval_matches_normal_theory(production_correct):
    candidate = _flip(production_correct, 10, 30)
    interval = paired_bootstrap(candidate, production_correct, resamples=4000, seed=0)
    deltas = candidate - production_correct
    # Independent check: the CLT interval mean +- 1.96 * sd / sqrt(n) of the paired deltas.
    half_width = 1.96 * deltas.std() / math.sqrt(N)
    assert interval.delta == pytest.approx(deltas.mean())
    assert interval.ci_low == pytest.approx(deltas.mean() - half_width, abs=0.25 * half_width)
    assert interval.ci_high == pytest.approx(deltas.mean() + half_width, abs=0.25 * half_width)
    constant = paired_bootstrap([0.5] * 10, [0.4] * 10)
    assert constant.ci_low == pytest.approx(0.1) and constant.ci_high == pytest.approx(0.1)


def test_bootstrap_weighted_mean():
    # weights 3 and 1: weighted mean delta = (3 * 1 + 1 * -1) / 4 = 0.5
    interval = paired_bootstrap([1.0, 0.0], [0.0, 1.0], [3.0, 1.0], resamples=200)
    assert interval.delta == pytest.approx(0.5)
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_markdown_lists_every_check(production_correct):
    decision = decide_gate(_report(_flip(production_correct, 40, 0)), POLICY,
                           production=_report(production_correct, model_hash="p" * 64))
    markdown = decision.to_markdown()
    assert markdown.startswith("## Evaluation gate: FAILED (2 check(s))")
    assert markdown.count("\n| ") == 1 + len(decision.checks)  # header + one row per check
    assert "`vqa/accuracy`" in markdown and "**FAIL**" in markdown and "pppppppppppp" in markdown


def test_policy_round_trips_as_flow_parameter():
    assert GatePolicy.model_validate_json(POLICY.model_dump_json()) == POLICY
    with pytest.raises(ValueError):
        GatePolicy(confidence_level=1.5)
