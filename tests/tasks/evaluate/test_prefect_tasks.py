"""The @task wrappers against a real Prefect server: artifacts, content cache, gate failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.evaluate.gates import GatePolicy, MetricThreshold, NonRegressionRule
from tasks.evaluate.harness import HarnessConfig
from tasks.evaluate.suites import PopeSuite, VqaSuite

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).parent / "fixtures"


def test_evaluate_gate_and_artifacts_in_a_flow(prefect_server, eve_home, tiny_eve_checkpoint, tmp_path):
    from prefect import flow, get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from tasks.evaluate.prefect_tasks import (
        EvaluationGateFailed,
        evaluate_model_task,
        evaluation_cache_key,
        evaluation_gate_task,
    )

    suites = [VqaSuite(name="demo_vqa", path=FIXTURES / "vqa.jsonl"),
              PopeSuite(name="pope", question_file=FIXTURES / "pope.jsonl")]
    config = HarnessConfig(batch_size=4, max_new_tokens=4, show_progress=False)
    passing = GatePolicy(thresholds=[MetricThreshold(metric="demo_vqa/accuracy", minimum=0.0)],
                         non_regression=[NonRegressionRule(metric="pope/accuracy", tolerance=0.0)])
    impossible = GatePolicy(thresholds=[MetricThreshold(metric="pope/accuracy", minimum=1.01)])

    @flow(name="evaluate-test")
    def evaluate_and_gate(policy: GatePolicy):
        candidate = evaluate_model_task(str(tiny_eve_checkpoint), suites, config, output_dir=str(tmp_path / "cand"))
        # Same content: served from the cache, not re-run (no files written in "prod").
        production_state = evaluate_model_task(str(tiny_eve_checkpoint), suites, config,
                                               output_dir=str(tmp_path / "prod"), return_state=True)
        production = production_state.result()
        decision = evaluation_gate_task(candidate, policy, production=production)
        return candidate, production_state.name, decision

    state = evaluate_and_gate(passing, return_state=True)
    candidate, production_state_name, decision = state.result()
    assert production_state_name == "Cached"
    assert decision.passed
    regression = next(c for c in decision.checks if c.rule == "non_regression")
    assert regression.delta == 0.0  # the same model against itself
    assert (tmp_path / "cand" / "report.json").exists() and (tmp_path / "cand" / "metrics.png").exists()
    assert not (tmp_path / "prod").exists()
    assert evaluation_cache_key(tiny_eve_checkpoint, suites, config) != evaluation_cache_key(
        tiny_eve_checkpoint, suites[:1], config)

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    keys = {a.key for a in artifacts}
    assert {"eval-metrics", "eval-demo-vqa-samples", "eval-pope-samples", "evaluation-gate"} <= keys
    gate_markdown = next(a for a in artifacts if a.key == "evaluation-gate").data
    assert gate_markdown.startswith("## Evaluation gate: PASSED")

    with pytest.raises(EvaluationGateFailed, match=r"threshold pope/accuracy: \S+ < minimum 1\.01"):
        evaluate_and_gate(impossible)
