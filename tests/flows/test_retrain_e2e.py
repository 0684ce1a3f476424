"""End to end: a small demo retrain through a real Prefect server and the local backend (2 gloo
ranks per stage), approved through the API; then the registry, the lineage manifest, and a
second run with unchanged inputs that trains nothing and mints no new version."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

def _small_stages():
    from eve_model.training.config import StageId, StageOverrides

    return {
        stage: StageOverrides(max_steps=steps, global_batch_size_samples=4, micro_batch_size_samples=2)
        for stage, steps in {StageId.BASE_LLM: 4, StageId.PREALIGN: 2, StageId.PRETRAIN: 2, StageId.SFT: 3}.items()
    }


def _small_params(demo_dir: Path, mode: str):
    from flows.parameters import EvaluationParameters, PromotionParameters
    from flows.recipes import demo
    from tasks.caption.config import CaptionConfig
    from tasks.data.demo_source import demo_sources
    from tasks.evaluate.gates import GatePolicy, MetricThreshold
    from tasks.evaluate.harness import HarnessConfig
    from tasks.quality.config import CaptionGateThresholds
    from tasks.stages import TrainingParameters

    sources = demo_sources(demo_dir)
    params = demo()
    return params.model_copy(update={
        "data": params.data.model_copy(update={
            "use_demo_source": False, "sources": sources.captions, "sft_sources": sources.sft, "curate": False,
        }),
        "captions": CaptionConfig(backend="source", source_field="true_caption"),
        # 24 scenes: a few repeated descriptions are a large share, so only hard row rules apply.
        "caption_quality": CaptionGateThresholds(max_duplicate_rate=1.0, max_filtered_fraction=1.0),
        "training": TrainingParameters(stage_overrides=_small_stages()),
        "evaluation": EvaluationParameters(
            harness=HarnessConfig(batch_size=8, max_new_tokens=4, show_progress=False),
            gate=GatePolicy(thresholds=[MetricThreshold(metric="demo_vqa/accuracy", minimum=0.0)]),
            eval_questions_path=sources.eval_questions_path,
        ),
        "promotion": PromotionParameters(mode=mode),
    })


def _approve_when_paused(deadline_seconds: float, outcome: dict, reviewer_auth: str) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState
    from prefect.client.schemas.filters import FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from tests.fixtures.promotion_runs import submit_decision

    deadline = time.monotonic() + deadline_seconds
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["promote-eve"])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))),
            )
            if runs:
                submit_decision(os.environ["PREFECT_API_URL"], reviewer_auth, runs[0].id,
                                {"decision": "approve", "comment": "e2e: small model, gate passed"})
                outcome["resumed"] = str(runs[0].id)
                return
            time.sleep(1)
    outcome["resumed"] = None


def test_small_retrain_end_to_end_then_unchanged_rerun_trains_nothing(prefect_server, prefect_accounts, eve_home, tmp_path):
    from eve_model.shards import verify_dataset
    from flows.retrain_flow import retrain
    from tasks.data.demo_source import DemoDataConfig, generate_demo_data
    from tasks.lineage.store import read_lineage
    from tasks.registry import ModelRegistry
    from tests.fixtures.promotion_runs import use_policy

    demo_dir = generate_demo_data(tmp_path / "raw", DemoDataConfig.tiny())

    use_policy(reviewers=("carol",), timeout_seconds=600)
    approval: dict = {}
    approver = threading.Thread(target=_approve_when_paused, args=(900, approval, prefect_accounts.auth("carol")),
                                daemon=True)
    approver.start()
    first = retrain(_small_params(demo_dir, mode="wait"))
    approver.join(5)

    assert approval.get("resumed"), "the promotion never paused for a decision"
    assert first.promotion == "approved"
    trained = [s for s in first.stages if not s.skipped]
    assert [s.stage for s in first.stages] == ["base-llm", "1", "2", "3"]
    assert len(trained) == 4
    # Each stage starts from its parent's output: the chain of checkpoint hashes is unbroken.
    for parent, child in zip(first.stages, first.stages[1:]):
        assert child.parent_weights_sha256 == parent.weights_sha256

    registry = ModelRegistry.default()
    version = first.candidate_version
    assert registry.production_version() == version
    assignment = [e for e in registry.history() if e.event == "assignment"][-1]
    assert assignment.reviewer == "carol" and assignment.comment

    lineage = read_lineage(registry.repo_dir, f"eve@{version}")
    assert [s.name for s in lineage.stages] == ["stage-base-llm", "stage-1", "stage-2", "stage-3"]
    assert lineage.stages[-1].weights_sha256 == first.stages[-1].weights_sha256
    for dataset in lineage.datasets:  # every dataset of the chain resolves to verified shards
        assert verify_dataset(dataset.location, dataset.dataset_hash).num_items == dataset.num_items
    assert lineage.quality is not None and lineage.quality.success
    # Stage 3 trained on the SFT mixture, derived from both the gated instruction data and the gated captions.
    by_role = {dataset.role: dataset for dataset in lineage.datasets}
    mixture = by_role["sft-mixture"]
    assert sorted(mixture.derived_from) == sorted([by_role["sft-filtered"].dataset_hash, by_role["filtered"].dataset_hash])
    assert lineage.stages[-1].input_dataset_hash == mixture.dataset_hash

    second = retrain(_small_params(demo_dir, mode="skip"))
    assert [s.skipped for s in second.stages] == [True, True, True, True]
    assert [s.weights_sha256 for s in second.stages] == [s.weights_sha256 for s in first.stages]
    assert second.candidate_version == version  # same weights: no second registration
