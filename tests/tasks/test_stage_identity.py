"""One identity per set of weights: the same tiny stage trained twice into two folders has one weights
hash, its child stage is a cache hit whichever copy it starts from, and the registry keeps one version.
Also: the stage cache key holds no path, so a second platform home computes the same key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from eve_model.identity import weights_sha256
from eve_model.training.config import StageId, StageOverrides
from tasks.platform import PlatformSettings, REPO_ROOT
from tasks.stages import TrainingParameters, find_cached_result, plan_stage, run_stage
from tasks.submit.spec import JobSpec
from tests.eve_model.training_datasets import write_tiny_dataset
from tests.fixtures.model_registry import passing_gate

pytestmark = pytest.mark.slow

_TINY = dict(global_batch_size_samples=4, micro_batch_size_samples=4, max_sequence_length_tokens=96,
             checkpoint_interval_steps=1, wandb_mode="disabled")


def _training(tmp_path: Path) -> TrainingParameters:
    return TrainingParameters(
        job=JobSpec(name="identity", command=["eve_model.train"], workdir=REPO_ROOT, tasks_per_node=1,
                    time_limit_minutes=10, log_dir=tmp_path / "logs", pre_timeout_signal_seconds=0),
        stage_overrides={StageId.BASE_LLM: StageOverrides(max_steps=2, **_TINY),
                         StageId.PREALIGN: StageOverrides(max_steps=1, **_TINY)},
    )


def test_identical_trainings_share_one_identity_child_cache_and_registry_version(
    eve_home, tmp_path, monkeypatch, registry_inputs
):
    from tasks.registry import ModelRegistry

    monkeypatch.setenv("WANDB_MODE", "disabled")
    manifest = write_tiny_dataset(tmp_path / "ds", num_samples=8, items_per_shard=4)
    training = _training(tmp_path)
    dataset = (str(tmp_path / "ds"), manifest.dataset_hash)

    planned = plan_stage.fn(StageId.BASE_LLM, training, *dataset, None)
    first = run_stage(planned, training, timeout_seconds=600)
    # The same stage again, into a second folder (as a fresh platform home would put it).
    elsewhere = planned.model_copy(
        update={"config": planned.config.model_copy(update={"output_dir": str(tmp_path / "second-base-llm")})}
    )
    second = run_stage(elsewhere, training, timeout_seconds=600)
    assert first.output_dir != second.output_dir and not second.skipped
    # The folders differ in how the runs went (paths in stage_config.json, throughput in final_metrics.json)...
    assert (Path(first.model_dir) / "stage_config.json").read_bytes() != (Path(second.model_dir) / "stage_config.json").read_bytes()
    # ...not in what they produced.
    assert first.weights_sha256 == second.weights_sha256 == weights_sha256(second.model_dir)
    assert json.loads((Path(second.model_dir) / "final_metrics.json").read_text())["weights_sha256"] == second.weights_sha256

    child_of_first = plan_stage.fn(StageId.PREALIGN, training, *dataset, first)
    trained_child = run_stage(child_of_first, training, timeout_seconds=600)
    child_of_second = plan_stage.fn(StageId.PREALIGN, training, *dataset, second)
    assert child_of_second.cache_key == child_of_first.cache_key
    reused = find_cached_result(child_of_second)
    assert reused is not None and reused.skipped and reused.weights_sha256 == trained_child.weights_sha256

    registry = ModelRegistry(PlatformSettings.load())
    _, lineage = registry_inputs(1)
    version = registry.register_candidate(Path(first.model_dir), lineage, passing_gate())
    assert registry.register_candidate(Path(second.model_dir), lineage, passing_gate()) == version
    assert [v.version for v in registry.show()] == [version]


def test_the_stage_cache_key_is_the_same_from_another_platform_home(tmp_path, monkeypatch):
    manifest = write_tiny_dataset(tmp_path / "ds", num_samples=8, items_per_shard=4)
    keys, folders = [], []
    for home in ("home-a", "home-b"):
        monkeypatch.setenv("EVE_HOME", str(tmp_path / home))
        copy = shutil.copytree(tmp_path / "ds", tmp_path / home / "datasets" / "ds")  # the data at another path
        planned = plan_stage.fn(StageId.BASE_LLM, _training(tmp_path), str(copy), manifest.dataset_hash, None)
        keys.append(planned.cache_key)
        folders.append(planned.output_dir)
    assert keys[0] == keys[1] and folders[0] != folders[1]
