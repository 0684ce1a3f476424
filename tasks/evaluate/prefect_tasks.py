"""Thin Prefect tasks over the evaluation harness, the contamination check and the gate.

The work is done by plain functions (``harness``, ``contamination``, ``gates``); these wrappers
add what Prefect gives: retries, timeouts and caching on the decorator, and the table/markdown
artifacts reviewers see in the UI. A failing gate raises ``EvaluationGateFailed`` after its
artifacts are published (when ``fail_on_reject``), so no candidate is registered without it.

Evaluation is cached by content: the key is the model directory's hash plus the suites (their
specs and evaluation-set hashes), the decoding settings and the suite code versions, so
re-evaluating the unchanged production model for a comparison costs nothing.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from eve_model.identity import weights_sha256
from tasks.evaluate.contamination import (
    ContaminationReport,
    check_contamination,
    eval_inputs,
    iter_training_samples,
    teacher_embedder,
)
from tasks.evaluate.baselines import answer_baselines
from tasks.evaluate.gates import GateDecision, GatePolicy, decide_gate
from tasks.evaluate.harness import HarnessConfig, evaluate_model_dir
from tasks.evaluate.report import EvaluationReport, plot_metrics, publish_artifacts
from tasks.evaluate.review_samples import review_samples
from tasks.evaluate.suites import SUITE_VERSIONS, LlavaVqaSuite, SuiteSpec, VqaSuite, demo_evaluation_suites, load_benchmark
from tasks.evaluate.tracking import TrackedDataset, WandbTarget, log_evaluation_run
from tasks.lineage.openlineage import LineageDataset, lineage_run
from tasks.lineage.openlineage_refs import model_ref
from tasks.platform import PlatformSettings


class EvaluationGateFailed(RuntimeError):
    """The candidate did not pass the evaluation gate."""


def evaluation_cache_key(model_dir: str | Path, suites: list[SuiteSpec], config: HarnessConfig | None) -> str:
    """Content address of one evaluation (what a cached report is valid for)."""
    config = config or HarnessConfig()
    payload = {
        "model": weights_sha256(model_dir),
        "suites": [
            {"spec": spec.model_dump(mode="json"), "eval_set": load_benchmark(spec).content_hash,
             "version": SUITE_VERSIONS[spec.kind]}
            for spec in suites
        ],
        # Progress bars and device do not change results.
        "config": config.model_dump(mode="json", exclude={"show_progress", "device"}),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _cache_key_fn(context: Any, parameters: dict[str, Any]) -> str:
    return "evaluate-" + evaluation_cache_key(parameters["model_dir"], parameters["suites"], parameters.get("config"))


@task(
    name="evaluate-model",
    retries=0,
    timeout_seconds=12 * 3600,
    cache_key_fn=_cache_key_fn,
    cache_expiration=timedelta(days=30),
    persist_result=True,
    task_run_name="evaluate-{model_dir}",
)
def evaluate_model_task(
    model_dir: str,
    suites: list[SuiteSpec],
    config: HarnessConfig | None = None,
    output_dir: str | None = None,
    production: EvaluationReport | None = None,
) -> EvaluationReport:
    """Run the suites on a model directory; writes ``report.json`` + ``metrics.png`` and publishes tables.

    On a cache hit (same model content, suites, evaluation sets and settings) the stored report is
    returned and nothing is re-run or re-written.
    """
    report = evaluate_model_dir(model_dir, suites, config)
    target = Path(output_dir) if output_dir else PlatformSettings.load().path("evaluations", report.weights_sha256[:16])
    report.save(target / "report.json")
    plot_metrics(report, target / "metrics.png", production=production)
    publish_artifacts(report, production, key_prefix="eval")
    return report


evaluation_suites = task(name="evaluation-suites")(demo_evaluation_suites)
"""The demo's held-out suites as a task (the derived held-out text is written under the platform home)."""


def answer_suites(suites: list[SuiteSpec]) -> list[SuiteSpec]:
    """The suites that ask questions with reference answers about images (VQA), of ``suites``."""
    return [spec for spec in suites if isinstance(spec, (VqaSuite, LlavaVqaSuite))]


@task(name="answer-baselines")
def answer_baselines_task(suites: list[SuiteSpec]) -> dict[str, dict[str, float]]:
    """Metric -> {baseline -> score} for every VQA suite: uniform chance and most common answer, over
    and per question type (``tasks.evaluate.baselines``)."""
    baselines: dict[str, dict[str, float]] = {}
    for spec in answer_suites(suites):
        baselines.update(answer_baselines(spec.name, load_benchmark(spec).items).by_metric())
    return baselines


@task(name="review-samples")
def review_samples_task(
    candidate: EvaluationReport, production: EvaluationReport | None, suites: list[SuiteSpec]
) -> list[dict[str, Any]]:
    """Sample answers with their images for the review form (``tasks.evaluate.review_samples``)."""
    return review_samples(candidate, production, suites)


@task(name="track-evaluation")
def track_evaluation_task(
    candidate: EvaluationReport,
    production: EvaluationReport | None,
    gate: GateDecision,
    samples: list[dict[str, Any]],
    datasets: list[TrackedDataset],
    target: WandbTarget,
) -> str | None:
    """The evaluation as a W&B run in the retrain's group (``tasks.evaluate.tracking``); a W&B failure
    is a warning, never the retrain's failure."""
    try:
        return log_evaluation_run(candidate, production, gate, samples, datasets, target)
    except Exception as error:  # noqa: BLE001 - W&B is an observer
        get_run_logger().warning("evaluation not recorded in W&B: %s: %s", type(error).__name__, error)
        return None


@task(name="check-contamination", retries=0, timeout_seconds=6 * 3600)
def check_contamination_task(
    suites: list[SuiteSpec],
    training_datasets: list[str],
    near_duplicate_threshold: float = 0.85,
    ngram_n: int = 8,
    use_teacher_embeddings: bool = True,
    cache_teacher_features: bool = False,
) -> ContaminationReport:
    """Evaluation images/references of ``suites`` against eve-wds training datasets;
    ``cache_teacher_features`` reads and fills the platform's teacher feature cache."""
    images, texts = eval_inputs({spec.name: load_benchmark(spec) for spec in suites})
    report = check_contamination(
        images, iter_training_samples(training_datasets), texts,
        embed=teacher_embedder(
            feature_cache_dir=PlatformSettings.load().teacher_feature_cache_dir if cache_teacher_features else None
        ) if use_teacher_embeddings else None,
        near_duplicate_threshold=near_duplicate_threshold, ngram_n=ngram_n, show_progress=True,
    )
    matches = (
        [{"kind": "bytes", "eval": m.eval_id, "train": m.train_key, "cosine": None} for m in report.exact_byte_matches]
        + [{"kind": "pixels", "eval": m.eval_id, "train": m.train_key, "cosine": None} for m in report.exact_pixel_matches]
        + [{"kind": "near", "eval": m.eval_id, "train": m.train_key, "cosine": round(m.cosine or 0, 4)}
           for m in report.near_duplicates]
    )
    create_table_artifact(
        key="eval-contamination",
        table=matches or [{"kind": "none", "eval": "", "train": "", "cosine": report.max_cosine}],
        description=f"{report.num_contaminated_images} of {report.num_eval_images} evaluation images found in "
        f"{report.num_train_images} training images; {report.ngram_n}-gram reference overlap rate "
        f"{report.ngram_overlap_rate}",
    )
    return report


def gate_decision_path(candidate_weights_sha256: str) -> Path:
    """Where the evaluation gate keeps its last decision on a candidate (``GateDecision`` JSON)."""
    return PlatformSettings.load().path("evaluations", candidate_weights_sha256[:16]) / "gate.json"


@task(name="evaluation-gate", retries=0, timeout_seconds=600)
def evaluation_gate_task(
    candidate: EvaluationReport,
    policy: GatePolicy,
    production: EvaluationReport | None = None,
    contamination: ContaminationReport | None = None,
    fail_on_reject: bool = True,
) -> GateDecision:
    """Decide the gate and publish it as markdown; raises ``EvaluationGateFailed`` on reject if asked.

    The failure message names every failing rule and metric with its reason; warnings (e.g. an
    evaluation set too small to decide a rule) go to the run log and the markdown.
    """
    read = [model_ref(candidate.model_dir, candidate.weights_sha256, role="candidate")]
    if production is not None:
        read.append(model_ref(production.model_dir, production.weights_sha256, role="production"))
    read += [LineageDataset(name=f"evaluation/{suite.name}", content_hash=suite.eval_set_hash, num_items=suite.num_items,
                            extra={"role": "evaluation set", "suite_version": suite.suite_version})
             for suite in candidate.suites.values()]
    with lineage_run("evaluation-gate", read):
        decision = decide_gate(candidate, policy, production=production, contamination=contamination)
    # Kept on disk, next to the candidate's report, so a blocked retrain's numbers (deltas, CIs, set
    # sizes) can be read after the run failed: a rejected candidate is never registered anywhere else.
    decision_path = gate_decision_path(candidate.weights_sha256)
    decision_path.write_text(decision.model_dump_json(indent=2))
    create_markdown_artifact(
        decision.to_markdown(), key="evaluation-gate",
        description=f"evaluation gate for model {candidate.weights_sha256[:12]}",
    )
    logger = get_run_logger()
    for check in decision.warnings:
        logger.warning("evaluation gate, %s %s: %s", check.rule, check.metric, check.warning)
    if fail_on_reject and not decision.passed:
        raise EvaluationGateFailed(
            f"model {candidate.weights_sha256[:12]} failed the evaluation gate: "
            + "; ".join(f"{c.rule} {c.metric}: {c.reason}" for c in decision.failures)
            + f" (the whole decision: {decision_path})"
        )
    return decision


__all__ = [
    "EvaluationGateFailed",
    "gate_decision_path",
    "answer_baselines_task",
    "answer_suites",
    "review_samples_task",
    "track_evaluation_task",
    "check_contamination_task",
    "evaluate_model_task",
    "evaluation_cache_key",
    "evaluation_gate_task",
    "evaluation_suites",
]
