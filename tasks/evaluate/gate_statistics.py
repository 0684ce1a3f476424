"""The evaluation gate's statistics: the seeded (paired) bootstrap and the sample-size figure.

Plain numpy on per-sample scores; no models, no Prefect. ``docs/evaluation.md`` explains the
choices for reviewers.

    interval = paired_bootstrap(candidate_scores, production_scores, seed=0)
    needed = required_sample_size(interval.standard_error, interval.num_samples, margin=0.05,
                                  confidence_level=0.95, power=0.8)
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
from pydantic import BaseModel


class BootstrapInterval(BaseModel):
    """A weighted mean, its percentile bootstrap interval and its standard error."""

    delta: float
    """Observed weighted mean on all samples (for ``paired_bootstrap``: of the oriented deltas)."""
    ci_low: float
    ci_high: float
    num_samples: int
    standard_error: float
    """Analytic standard error of the weighted mean (deterministic; sizes the sample-size figure)."""


def weighted_mean_standard_error(values: np.ndarray, weights: np.ndarray) -> float:
    """Standard error of ``sum(w * x) / sum(w)`` over independently drawn samples.

    ``sqrt(sum(w_i^2 (x_i - mean)^2)) / sum(w)``: with equal weights this is the (population)
    standard deviation over ``sqrt(n)``; with token counts as weights, long documents count more.
    """
    total = weights.sum()
    mean = (weights * values).sum() / total
    return float(math.sqrt(((weights * (values - mean)) ** 2).sum()) / total)


def bootstrap_mean(
    values: np.ndarray | list[float],
    weights: np.ndarray | list[float] | None = None,
    *,
    resamples: int = 2000,
    seed: int = 0,
    confidence_level: float = 0.95,
) -> BootstrapInterval:
    """Central ``confidence_level`` percentile interval of the weighted mean of ``values``.

    ``resamples`` draws of n samples with replacement (numpy PCG64 seeded with ``seed``), so the
    interval is reproducible given the scores and the seed.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"the bootstrap needs a non-empty 1-D array, got shape {x.shape}")
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != x.shape or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be non-negative, one per sample, and not all zero")
    rng = np.random.Generator(np.random.PCG64(seed))
    statistics = np.empty(resamples)
    block = max(1, 2_000_000 // x.size)  # bounds the (block, N) index matrix to ~16 MB
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))
        weight_sums = w[idx].sum(axis=1)
        # A resample of only zero-weight samples has no defined mean; count it as no change.
        statistics[start:stop] = np.divide(
            (x[idx] * w[idx]).sum(axis=1), weight_sums,
            out=np.zeros(stop - start), where=weight_sums > 0,
        )
    tail = (1.0 - confidence_level) / 2.0
    low, high = np.quantile(statistics, [tail, 1.0 - tail])
    return BootstrapInterval(
        delta=float((x * w).sum() / w.sum()), ci_low=float(low), ci_high=float(high),
        num_samples=int(x.size), standard_error=weighted_mean_standard_error(x, w),
    )


def paired_bootstrap(
    candidate: np.ndarray | list[float],
    production: np.ndarray | list[float],
    weights: np.ndarray | list[float] | None = None,
    *,
    higher_is_better: bool = True,
    resamples: int = 2000,
    seed: int = 0,
    confidence_level: float = 0.95,
) -> BootstrapInterval:
    """Percentile CI of the weighted mean of paired, oriented deltas (positive = candidate better).

    ``candidate[i]`` and ``production[i]`` are the two models' scores on the same sample i;
    resampling draws whole pairs, so the between-sample variance (easy vs hard questions) cancels.
    """
    cand = np.asarray(candidate, dtype=np.float64)
    prod = np.asarray(production, dtype=np.float64)
    if cand.shape != prod.shape or cand.ndim != 1 or cand.size == 0:
        raise ValueError(f"paired bootstrap needs two equal non-empty 1-D arrays, got {cand.shape} and {prod.shape}")
    deltas = cand - prod if higher_is_better else prod - cand
    return bootstrap_mean(deltas, weights, resamples=resamples, seed=seed, confidence_level=confidence_level)


def one_sided_z(confidence_level: float) -> float:
    """z of the one-sided test that the low (or high) end of a central ``confidence_level`` CI makes:
    1.96 for 0.95 (each end of a 95% interval is a 97.5% one-sided bound)."""
    return NormalDist().inv_cdf((1.0 + confidence_level) / 2.0)


def required_sample_size(
    standard_error: float, num_samples: int, margin: float, confidence_level: float, power: float
) -> int | None:
    """Samples needed so that the gate resolves ``margin`` with probability ``power``.

    Two readings of the same number: a candidate truly as good as production is shown
    non-inferior (CI low end above ``-margin``) with probability ``power``; and a candidate truly
    worse by ``margin`` is shown significantly worse (CI high end below 0) with probability
    ``power``. Normal approximation, the per-sample spread taken from the observed standard error:
    ``n = ((z_conf + z_power) * standard_error * sqrt(num_samples) / margin) ** 2``.
    None when it cannot be said: a zero margin (no finite set suffices) or no spread observed.
    """
    if margin <= 0 or standard_error <= 0 or num_samples <= 0:
        return None
    per_sample_sd = standard_error * math.sqrt(num_samples)
    z = one_sided_z(confidence_level) + NormalDist().inv_cdf(power)
    return math.ceil((z * per_sample_sd / margin) ** 2)


__all__ = [
    "BootstrapInterval",
    "bootstrap_mean",
    "one_sided_z",
    "paired_bootstrap",
    "required_sample_size",
    "weighted_mean_standard_error",
]
