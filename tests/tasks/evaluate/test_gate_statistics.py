"""The gate's statistics: bootstrap intervals against normal theory, and the sample-size figure
against what the gate actually does on simulated evaluation sets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.evaluate.gate_statistics import (
    bootstrap_mean,
    one_sided_z,
    paired_bootstrap,
    required_sample_size,
    weighted_mean_standard_error,
)


def _discordant_deltas(rng: np.random.Generator, n: int, discordance: float, shift: float = 0.0) -> np.ndarray:
    """Paired 0/1-score deltas: each question changes with probability ``discordance``, a gain or a
    loss with the odds that make the expected delta ``shift``."""
    changed = rng.random(n) < discordance
    gain = rng.random(n) < 0.5 + shift / (2 * discordance)
    return np.where(changed, np.where(gain, 1.0, -1.0), 0.0)


def test_bootstrap_reproducible_with_seed():
    rng = np.random.default_rng(0)
    candidate, production = rng.random(300) < 0.6, rng.random(300) < 0.6
    first = paired_bootstrap(candidate, production, seed=3, resamples=500)
    again = paired_bootstrap(candidate, production, seed=3, resamples=500)
    other = paired_bootstrap(candidate, production, seed=4, resamples=500)
    assert first == again
    assert (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)


def test_bootstrap_interval_matches_normal_theory():
    deltas = _discordant_deltas(np.random.default_rng(1), 400, 0.3, shift=0.05)
    interval = bootstrap_mean(deltas, resamples=4000, seed=0)
    # Independent check: the CLT interval mean +- 1.96 * sd / sqrt(n).
    half_width = 1.96 * deltas.std() / math.sqrt(deltas.size)
    assert interval.delta == pytest.approx(deltas.mean())
    assert interval.standard_error == pytest.approx(deltas.std() / math.sqrt(deltas.size))
    assert interval.ci_low == pytest.approx(deltas.mean() - half_width, abs=0.15 * half_width)
    assert interval.ci_high == pytest.approx(deltas.mean() + half_width, abs=0.15 * half_width)
    constant = paired_bootstrap([0.5] * 10, [0.4] * 10)
    assert constant.ci_low == pytest.approx(0.1) and constant.ci_high == pytest.approx(0.1)
    assert constant.standard_error == pytest.approx(0.0)


def test_weighted_mean_and_its_standard_error():
    # weights 3 and 1: weighted mean delta = (3 * 1 + 1 * -1) / 4 = 0.5
    interval = paired_bootstrap([1.0, 0.0], [0.0, 1.0], [3.0, 1.0], resamples=200)
    assert interval.delta == pytest.approx(0.5)
    # sqrt(3^2 * 0.5^2 + 1^2 * 1.5^2) / 4
    assert interval.standard_error == pytest.approx(math.sqrt(9 * 0.25 + 2.25) / 4)
    # Equal weights reduce to sd / sqrt(n), whatever their scale.
    values = np.array([0.1, 0.7, 0.3, 0.9])
    assert weighted_mean_standard_error(values, np.full(4, 7.0)) == pytest.approx(values.std() / 2)
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        bootstrap_mean([1.0, 2.0], [0.0, 0.0])


def test_required_sample_size_reproduces_the_issue_figures():
    """The drill's CI [-0.11, +0.055] on 200 questions: standard error 0.042."""
    standard_error = (0.055 + 0.11) / 2 / 1.96
    assert one_sided_z(0.95) == pytest.approx(1.96, abs=0.001)
    assert required_sample_size(standard_error, 200, 0.15, 0.95, 0.8) == pytest.approx(123, abs=2)
    assert required_sample_size(standard_error, 200, 0.05, 0.95, 0.8) == pytest.approx(1107, abs=15)
    # A quarter of the margin needs 16x the samples; a zero margin or no spread has no answer.
    assert required_sample_size(standard_error, 200, 0.025, 0.95, 0.8) == pytest.approx(
        16 * required_sample_size(standard_error, 200, 0.1, 0.95, 0.8), rel=0.01)
    assert required_sample_size(standard_error, 200, 0.0, 0.95, 0.8) is None
    assert required_sample_size(0.0, 200, 0.1, 0.95, 0.8) is None


def test_at_the_required_size_the_gate_resolves_the_margin_with_the_chosen_power():
    """Simulated evaluation sets of exactly the required size, decided by the bootstrap as the gate
    does: an equally good candidate is shown non-inferior, and one worse by the margin is shown
    significantly worse, each about ``power`` of the time."""
    rng = np.random.default_rng(5)
    discordance, margin, power = 0.35, 0.15, 0.8
    standard_error_one = math.sqrt(discordance)  # per-question sd of the paired delta at delta 0
    n = required_sample_size(standard_error_one / math.sqrt(100), 100, margin, 0.95, power)
    trials = 300
    shown_non_inferior = shown_worse = 0
    for trial in range(trials):
        equal = bootstrap_mean(_discordant_deltas(rng, n, discordance), resamples=400, seed=trial)
        worse = bootstrap_mean(_discordant_deltas(rng, n, discordance, shift=-margin), resamples=400, seed=trial)
        shown_non_inferior += equal.ci_low >= -margin
        shown_worse += worse.ci_high < 0
    # 300 trials: a binomial standard deviation of 0.023 around 0.8.
    assert shown_non_inferior / trials == pytest.approx(power, abs=0.08)
    assert shown_worse / trials == pytest.approx(power, abs=0.08)
