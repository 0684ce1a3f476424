"""The stage cache: keys move with every input, results are found only for their own key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eve_model.training.config import tiny_stage_config
from tasks.platform import PlatformSettings
from tasks.stages import (
    STAGE_RESULT_NAME,
    CachedStageInvalid,
    StageFailed,
    StageResult,
    cached_stage,
    find_cached_result,
    place_stage,
    stage_cache_key,
)


def _config(output_dir: str = "unset", **overrides):
    return tiny_stage_config(1, output_dir=output_dir, dataset_location="/data/v1", dataset_hash="d" * 64,
                             init_checkpoint="/ckpt/base", **overrides)


def test_cache_key_changes_with_each_input_and_not_with_locations():
    base = stage_cache_key("d1", "p1", "c1", "r1")
    assert len({base, stage_cache_key("d2", "p1", "c1", "r1"), stage_cache_key("d1", "p2", "c1", "r1"),
                stage_cache_key("d1", "p1", "c2", "r1"), stage_cache_key("d1", "p1", "c1", "r2")}) == 5
    # output_dir, run_name and the dataset / init checkpoint locations are not inputs (their content is
    # pinned by hash in the key): same content hash, same key
    assert _config().content_hash() == _config(output_dir="elsewhere", run_name="renamed").content_hash()
    moved = tiny_stage_config(1, output_dir="o", dataset_location="/other-home/data/v1", dataset_hash="d" * 64,
                              init_checkpoint="/other-home/ckpt/base")
    assert _config().content_hash() == moved.content_hash()
    assert _config().content_hash() != _config(max_steps=21).content_hash()


def test_plan_stage_names_the_folder_after_the_key(eve_home):
    settings = PlatformSettings.load()
    first = place_stage(_config(), settings, parent_weights_sha256="p" * 64, revision="rev1")
    again = place_stage(_config(run_name="other"), settings, parent_weights_sha256="p" * 64, revision="rev1")
    new_code = place_stage(_config(), settings, parent_weights_sha256="p" * 64, revision="rev2")
    assert first.output_dir == again.output_dir and first.cache_key == again.cache_key
    assert first.output_dir != new_code.output_dir
    assert first.output_dir.parent == settings.runs_dir / "stages"
    assert first.cache_key == stage_cache_key("d" * 64, "p" * 64, first.config.content_hash(), "rev1")


def _write_result(planned) -> Path:
    """A finished stage in the planned folder: tiny real model files, and the recorded result."""
    from eve_model.identity import weights_sha256

    model_dir = planned.output_dir / "final"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(b"weights" * 100)
    result = StageResult(stage="1", cache_key=planned.cache_key, output_dir=str(planned.output_dir),
                         model_dir=str(model_dir), weights_sha256=weights_sha256(model_dir), dataset_hash="d" * 64,
                         parent_weights_sha256=None, config_hash="h" * 64, code_revision="rev")
    (planned.output_dir / STAGE_RESULT_NAME).write_text(result.model_dump_json())
    return model_dir


def test_a_result_is_reused_only_for_its_own_key(eve_home):
    settings = PlatformSettings.load()
    planned = place_stage(_config(), settings, parent_weights_sha256=None, revision="rev1")
    _write_result(planned)
    found = find_cached_result(planned)
    assert found is not None and found.skipped and found.wall_seconds == 0
    other_key = planned.model_copy(update={"cache_key": "k2"})
    assert find_cached_result(other_key) is None


@pytest.mark.parametrize("damage", ["truncate", "edit", "delete"])
def test_a_cache_hit_reverifies_the_weights_and_sets_a_damaged_result_aside(eve_home, damage):
    planned = place_stage(_config(), PlatformSettings.load(), parent_weights_sha256=None, revision="rev1")
    model_dir = _write_result(planned)
    weights = model_dir / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:50])
    elif damage == "edit":
        weights.write_bytes(weights.read_bytes().replace(b"w", b"W", 1))
    else:
        weights.unlink()
    with pytest.raises(CachedStageInvalid, match="stage 1 cache entry"):
        find_cached_result(planned)
    # the damaged output is kept as evidence, and the folder no longer claims a result
    assert not (planned.output_dir / STAGE_RESULT_NAME).exists()
    assert not model_dir.exists() and len(list(planned.output_dir.glob("final.mismatch-*"))) == 1
    assert find_cached_result(planned) is None


def test_train_from_stage_refuses_to_silently_retrain_a_missing_earlier_stage(eve_home):
    planned = place_stage(_config(), PlatformSettings.load(), parent_weights_sha256=None, revision="rev")
    with pytest.raises(StageFailed, match="no cached result"):
        cached_stage.fn(planned)
    _write_result(planned)
    assert cached_stage.fn(planned).skipped
    assert json.loads((planned.output_dir / STAGE_RESULT_NAME).read_text())["cache_key"] == planned.cache_key
