"""The evaluation gate: absolute minimums, statistical non-regression, aggregate rule, contamination.

The decision rules, exactly (``delta`` is always *oriented*: positive means the candidate is
better, i.e. ``candidate - production`` for higher-is-better metrics and ``production -
candidate`` for lower-is-better ones such as perplexity):

1. Threshold: a metric passes when ``minimum <= value <= maximum`` (each bound optional). A
   missing metric fails.
2. Non-regression (only when a production report is given): candidate and production must have
   the same suite version and evaluation-set hash (else the check fails as not comparable).
   Per-sample scores are paired by item id; ``policy.bootstrap_resamples`` resamples of the
   items (numpy PCG64 seeded with ``policy.bootstrap_seed``) give the distribution of the
   weighted mean paired delta, and its central ``confidence_level`` percentile interval is
   ``[ci_low, ci_high]``. The check **fails iff ``ci_high < -tolerance``**: the candidate is
   worse by more than the tolerance with (one-sided) confidence ``(1 + confidence_level) / 2``.
   A tie within noise (interval straddling 0) passes.
3. Aggregate: the mean of the observed deltas over the non-regression metrics must be
   ``>= -aggregate_tolerance`` (mixes units, so list comparable metrics, e.g. accuracies).
4. Contamination: any evaluation image that is a byte-, pixel- or near-duplicate of a training
   image fails the gate (``fail_on_contamination``).

The gate passes iff every check passes. ``GateDecision.to_markdown()`` renders it for reviewers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from tasks.evaluate.report import EvaluationReport, SuiteResult

if TYPE_CHECKING:
    from tasks.evaluate.contamination import ContaminationReport


class MetricThreshold(BaseModel):
    """An absolute bound on one metric of the candidate."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    metric: str
    """``<suite>/<metric>``, e.g. ``demo_vqa/accuracy``."""
    minimum: float | None = None
    """Lower bound, for higher-is-better metrics such as accuracy or CIDEr-D."""
    maximum: float | None = None
    """Upper bound, for lower-is-better metrics such as ``text/perplexity``."""


class NonRegressionRule(BaseModel):
    """The candidate may not be worse than production on this metric beyond ``tolerance``."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    metric: str
    """``<suite>/<metric>``; must be one of the suite's per-sample metrics (bootstrappable)."""
    tolerance: float = 0.0
    """Allowed regression in the metric's own units (0.02 = two accuracy points)."""


class GatePolicy(BaseModel):
    """Evaluation gate policy (a flow parameter)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    thresholds: list[MetricThreshold] = Field(default_factory=list)
    """Absolute bounds the candidate must meet whether or not there is a production model."""
    non_regression: list[NonRegressionRule] = Field(default_factory=list)
    """Per-metric paired-bootstrap non-regression rules against the production model."""
    aggregate_tolerance: float | None = 0.0
    """Mean oriented delta over the non-regression metrics must be >= -this; None disables."""
    confidence_level: float = Field(default=0.95, gt=0.0, lt=1.0)
    """Central coverage of the bootstrap interval."""
    bootstrap_resamples: int = Field(default=2000, ge=100)
    """Resamples of the paired bootstrap (more = steadier interval bounds)."""
    bootstrap_seed: int = 0
    """Seed of the bootstrap; the decision is reproducible given the reports and this seed."""
    fail_on_contamination: bool = True
    """Fail when any evaluation image duplicates (exactly or nearly) a training image."""


class BootstrapInterval(BaseModel):
    delta: float
    """Observed (oriented) weighted mean paired delta on all samples."""
    ci_low: float
    ci_high: float
    num_samples: int


class GateCheck(BaseModel):
    """The outcome of one rule on one metric, with the numbers that decided it."""

    rule: Literal["threshold", "non_regression", "aggregate", "contamination"]
    metric: str
    passed: bool
    reason: str
    candidate: float | None = None
    production: float | None = None
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    limit: float | None = None
    """The bound or -tolerance the value was compared with."""


class GateDecision(BaseModel):
    """The evaluation gate's verdict, every check with its numbers, and the policy that decided."""

    passed: bool
    """True when every check passed."""
    checks: list[GateCheck]
    """One per rule (threshold, non-regression, aggregate, contamination)."""
    policy: GatePolicy
    """The rules as configured for this run."""
    candidate_weights_sha256: str
    """``eve_model.identity.weights_sha256`` of the candidate."""
    production_weights_sha256: str | None = None
    """The same for the production model it was compared with (None on the first promotion)."""

    @property
    def failures(self) -> list[GateCheck]:
        return [check for check in self.checks if not check.passed]

    def to_markdown(self) -> str:
        """A reviewer-facing table: one row per check, with values, deltas and CI bounds."""

        def fmt(value: float | None) -> str:
            return "" if value is None else f"{value:.4g}"

        verdict = "PASSED" if self.passed else f"FAILED ({len(self.failures)} check(s))"
        lines = [
            f"## Evaluation gate: {verdict}",
            "",
            f"Candidate model `{self.candidate_weights_sha256[:12]}`"
            + (f" vs production `{self.production_weights_sha256[:12]}`" if self.production_weights_sha256
               else " (no production model)")
            + f". Delta is oriented (positive = candidate better); {self.policy.confidence_level:.0%} "
            f"paired-bootstrap CI, {self.policy.bootstrap_resamples} resamples, seed {self.policy.bootstrap_seed}.",
            "",
            "| result | rule | metric | candidate | production | delta | CI low | CI high | limit | reason |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in self.checks:
            reason = c.reason.replace("|", "\\|")
            lines.append(
                f"| {'pass' if c.passed else '**FAIL**'} | {c.rule} | `{c.metric}` | {fmt(c.candidate)} | "
                f"{fmt(c.production)} | {fmt(c.delta)} | {fmt(c.ci_low)} | {fmt(c.ci_high)} | "
                f"{fmt(c.limit)} | {reason} |"
            )
        return "\n".join(lines) + "\n"


class EvaluationSummary(BaseModel):
    """What a retrain records about its candidate's evaluation (lineage, flow result, evidence)."""

    metrics: dict[str, float]
    """Flat metrics of the candidate (``suite/metric``)."""
    weights_sha256: str
    """The evaluated weights."""
    gate: GateDecision
    """The gate's verdict."""


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
    """Percentile CI of the weighted mean of paired, oriented deltas.

    ``candidate[i]`` and ``production[i]`` are the two models' scores on the same sample i;
    resampling draws whole pairs, so the between-sample variance cancels.
    """
    cand = np.asarray(candidate, dtype=np.float64)
    prod = np.asarray(production, dtype=np.float64)
    if cand.shape != prod.shape or cand.ndim != 1 or cand.size == 0:
        raise ValueError(f"paired bootstrap needs two equal non-empty 1-D arrays, got {cand.shape} and {prod.shape}")
    w = np.ones_like(cand) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != cand.shape or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be non-negative, one per sample, and not all zero")
    deltas = cand - prod if higher_is_better else prod - cand
    rng = np.random.Generator(np.random.PCG64(seed))
    statistics = np.empty(resamples)
    block = max(1, 2_000_000 // cand.size)  # bounds the (block, N) index matrix to ~16 MB
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        idx = rng.integers(0, cand.size, size=(stop - start, cand.size))
        weight_sums = w[idx].sum(axis=1)
        # A resample of only zero-weight samples has no defined mean; count it as no change.
        statistics[start:stop] = np.divide(
            (deltas[idx] * w[idx]).sum(axis=1), weight_sums,
            out=np.zeros(stop - start), where=weight_sums > 0,
        )
    tail = (1.0 - confidence_level) / 2.0
    low, high = np.quantile(statistics, [tail, 1.0 - tail])
    return BootstrapInterval(
        delta=float((deltas * w).sum() / w.sum()), ci_low=float(low), ci_high=float(high),
        num_samples=int(cand.size),
    )


def _threshold_check(rule: MetricThreshold, candidate: EvaluationReport) -> GateCheck:
    value = candidate.metric(rule.metric)
    if value is None or not np.isfinite(value):
        return GateCheck(rule="threshold", metric=rule.metric, passed=False,
                         reason="metric missing (or not finite) in the candidate report")
    if rule.minimum is not None and value < rule.minimum:
        return GateCheck(rule="threshold", metric=rule.metric, passed=False, candidate=value,
                         limit=rule.minimum, reason=f"{value:.4g} < minimum {rule.minimum:.4g}")
    if rule.maximum is not None and value > rule.maximum:
        return GateCheck(rule="threshold", metric=rule.metric, passed=False, candidate=value,
                         limit=rule.maximum, reason=f"{value:.4g} > maximum {rule.maximum:.4g}")
    bound = rule.minimum if rule.minimum is not None else rule.maximum
    return GateCheck(rule="threshold", metric=rule.metric, passed=True, candidate=value, limit=bound,
                     reason="within bounds")


def _paired_scores(
    metric_name: str, cand: SuiteResult, prod: SuiteResult
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample scores of both models aligned by item id, plus the candidate's weights."""
    production_by_id = {s.item_id: s for s in prod.samples}
    cand_scores, prod_scores, weights = [], [], []
    for sample in cand.samples:
        other = production_by_id[sample.item_id]
        cand_scores.append(sample.scores[metric_name])
        prod_scores.append(other.scores[metric_name])
        weights.append(sample.weight)
    return np.array(cand_scores), np.array(prod_scores), np.array(weights)


def _non_regression_check(
    rule: NonRegressionRule, candidate: EvaluationReport, production: EvaluationReport, policy: GatePolicy
) -> GateCheck:
    suite_name, _, metric_name = rule.metric.partition("/")
    cand, prod = candidate.suites.get(suite_name), production.suites.get(suite_name)

    def fail(reason: str) -> GateCheck:
        return GateCheck(rule="non_regression", metric=rule.metric, passed=False, reason=reason,
                         candidate=candidate.metric(rule.metric), production=production.metric(rule.metric))

    if cand is None:
        return fail(f"suite {suite_name!r} missing from the candidate report")
    if prod is None:
        return fail(f"suite {suite_name!r} missing from the production report; evaluate production on it")
    if metric_name not in cand.sample_metrics:
        return fail(f"{metric_name!r} has no per-sample scores in suite {suite_name!r} "
                    f"(bootstrappable: {cand.sample_metrics})")
    if cand.suite_version != prod.suite_version or cand.eval_set_hash != prod.eval_set_hash:
        return fail(
            "not comparable: suite version/eval set differ "
            f"({cand.suite_version}/{cand.eval_set_hash[:12]} vs {prod.suite_version}/{prod.eval_set_hash[:12]})"
        )
    cand_scores, prod_scores, weights = _paired_scores(metric_name, cand, prod)
    interval = paired_bootstrap(
        cand_scores, prod_scores, weights,
        higher_is_better=cand.higher_is_better.get(metric_name, True),
        resamples=policy.bootstrap_resamples, seed=policy.bootstrap_seed,
        confidence_level=policy.confidence_level,
    )
    passed = not interval.ci_high < -rule.tolerance
    reason = (
        f"delta {interval.delta:+.4g}, CI [{interval.ci_low:+.4g}, {interval.ci_high:+.4g}] "
        + ("does not lie entirely below" if passed else "lies entirely below")
        + f" -tolerance {-rule.tolerance:.4g} (n={interval.num_samples})"
    )
    return GateCheck(
        rule="non_regression", metric=rule.metric, passed=passed, reason=reason,
        candidate=cand.metrics.get(metric_name), production=prod.metrics.get(metric_name),
        delta=interval.delta, ci_low=interval.ci_low, ci_high=interval.ci_high, limit=-rule.tolerance,
    )


def _contamination_check(report: "ContaminationReport", enforce: bool) -> GateCheck:
    matches = report.num_contaminated_images
    summary = (
        f"{len(report.exact_byte_matches)} byte-identical, {len(report.exact_pixel_matches)} pixel-identical, "
        f"{len(report.near_duplicates)} near-duplicate (cosine >= {report.near_duplicate_threshold}) "
        f"of {report.num_eval_images} evaluation images; {report.ngram_n}-gram overlap of references "
        f"with training text: {report.ngram_overlap_rate if report.ngram_overlap_rate is not None else 'n/a'}"
    )
    return GateCheck(rule="contamination", metric="eval_images_in_training_data", passed=matches == 0 or not enforce,
                     candidate=float(matches), limit=0.0, reason=summary)


def decide_gate(
    candidate: EvaluationReport,
    policy: GatePolicy,
    production: EvaluationReport | None = None,
    contamination: "ContaminationReport | None" = None,
) -> GateDecision:
    """Apply ``policy`` to a candidate report (and production report, contamination report)."""
    checks = [_threshold_check(rule, candidate) for rule in policy.thresholds]
    if production is not None:
        regression = [_non_regression_check(r, candidate, production, policy) for r in policy.non_regression]
        checks.extend(regression)
        if policy.aggregate_tolerance is not None and regression:
            deltas = [c.delta for c in regression if c.delta is not None]
            if len(deltas) != len(regression):
                checks.append(GateCheck(rule="aggregate", metric="mean_delta", passed=False,
                                        reason="some non-regression metrics could not be compared"))
            else:
                mean_delta = float(np.mean(deltas))
                passed = mean_delta >= -policy.aggregate_tolerance
                checks.append(GateCheck(
                    rule="aggregate", metric="mean_delta", passed=passed, delta=mean_delta,
                    limit=-policy.aggregate_tolerance,
                    reason=f"mean oriented delta {mean_delta:+.4g} over {len(deltas)} metric(s) "
                    + (">=" if passed else "<") + f" {-policy.aggregate_tolerance:.4g}",
                ))
    else:
        for rule in policy.non_regression:
            checks.append(GateCheck(rule="non_regression", metric=rule.metric, passed=True,
                                    candidate=candidate.metric(rule.metric),
                                    reason="no production model yet: nothing to regress against"))
    if contamination is not None:
        checks.append(_contamination_check(contamination, policy.fail_on_contamination))
    return GateDecision(
        passed=all(check.passed for check in checks),
        checks=checks,
        policy=policy,
        candidate_weights_sha256=candidate.weights_sha256,
        production_weights_sha256=production.weights_sha256 if production is not None else None,
    )
