"""The stage cache: keys move with every input, results are found only for their own key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eve_model.training.config import tiny_stage_config
from tasks.platform import PlatformSettings
from tasks.stages import (
    STAGE_RESULT_NAME,
    StageFailed,
    StageResult,
    cached_stage,
    find_cached_result,
    plan_stage,
    stage_cache_key,
)


def _config(output_dir: str = "unset", **overrides):
    return tiny_stage_config(1, output_dir=output_dir, dataset_location="/data/v1", dataset_hash="d" * 64,
                             init_checkpoint="/ckpt/base", **overrides)


def test_cache_key_changes_with_each_input_and_not_with_locations():
    base = stage_cache_key("d1", "p1", "c1", "r1")
    assert len({base, stage_cache_key("d2", "p1", "c1", "r1"), stage_cache_key("d1", "p2", "c1", "r1"),
                stage_cache_key("d1", "p1", "c2", "r1"), stage_cache_key("d1", "p1", "c1", "r2")}) == 5
    # output_dir and run_name are locations/labels, not inputs: same content hash, same key
    assert _config().content_hash() == _config(output_dir="elsewhere", run_name="renamed").content_hash()
    assert _config().content_hash() != _config(max_steps=21).content_hash()


def test_plan_stage_names_the_folder_after_the_key(eve_home):
    settings = PlatformSettings.load()
    first = plan_stage(_config(), settings, parent_checkpoint_hash="p" * 64, revision="rev1")
    again = plan_stage(_config(run_name="other"), settings, parent_checkpoint_hash="p" * 64, revision="rev1")
    new_code = plan_stage(_config(), settings, parent_checkpoint_hash="p" * 64, revision="rev2")
    assert first.output_dir == again.output_dir
    assert first.output_dir != new_code.output_dir
    assert Path(first.output_dir).parent == settings.runs_dir / "stages"


def _write_result(output_dir: Path, key: str) -> None:
    model_dir = output_dir / "final"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text("{}")
    result = StageResult(stage="1", cache_key=key, output_dir=str(output_dir), model_dir=str(model_dir),
                         checkpoint_hash="c" * 64, dataset_hash="d" * 64, parent_checkpoint_hash=None,
                         config_hash="h" * 64, code_revision="rev")
    (output_dir / STAGE_RESULT_NAME).write_text(result.model_dump_json())


def test_a_result_is_reused_only_for_its_own_key(tmp_path):
    _write_result(tmp_path / "stage", "k1")
    found = find_cached_result(tmp_path / "stage", "k1")
    assert found is not None and found.skipped and found.wall_seconds == 0
    assert find_cached_result(tmp_path / "stage", "k2") is None
    # a result whose model directory vanished is not a cache hit
    (tmp_path / "stage" / "final" / "config.json").unlink()
    assert find_cached_result(tmp_path / "stage", "k1") is None


def test_train_from_stage_refuses_to_silently_retrain_a_missing_earlier_stage(eve_home, monkeypatch):
    monkeypatch.setattr("tasks.stages.code_revision", lambda: "rev")
    config = plan_stage(_config(), PlatformSettings.load(), parent_checkpoint_hash=None, revision="rev")
    with pytest.raises(StageFailed, match="no cached result"):
        cached_stage.fn(config, None)
    key = stage_cache_key(config.dataset_hash, None, config.content_hash(), "rev")
    _write_result(Path(config.output_dir), key)
    assert cached_stage.fn(config, None).skipped
    assert json.loads((Path(config.output_dir) / STAGE_RESULT_NAME).read_text())["cache_key"] == key
