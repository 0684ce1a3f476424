"""``eve train``: preset printing and config checks before anything is launched."""

from __future__ import annotations

import json

from cli.main import main
from eve_model.training.config import StageConfig


def test_preset_prints_a_config_that_parses(capsys, eve_home):
    assert main(["train", "preset", "--stage", "2", "--preset", "eve_7b", "--dataset", "s3://bucket/v3",
                 "--init-checkpoint", "/ckpt/stage1/final"]) == 0
    config = StageConfig.model_validate(json.loads(capsys.readouterr().out))
    assert (config.stage, config.global_batch_size_samples, config.zero_stage) == (2, 512, 3)
    assert config.init_checkpoint == "/ckpt/stage1/final"
    assert config.output_dir == str(eve_home / "runs" / "eve_7b-stage-2")


def test_preset_errors_exit_2(capsys, eve_home):
    assert main(["train", "preset", "--stage", "base-llm", "--preset", "eve_7b"]) == 2
    assert "no base-llm stage" in capsys.readouterr().err
    assert main(["train", "preset", "--stage", "7", "--preset", "tiny"]) == 2
    assert main(["train", "preset", "--stage", "1", "--preset", "huge"]) == 2


def test_run_refuses_a_bad_config_before_launching(tmp_path, capsys, eve_home):
    from eve_model.training.config import tiny_stage_config

    config = tiny_stage_config("base-llm", str(tmp_path / "out"), str(tmp_path / "no-dataset"))
    path = config.write(tmp_path / "stage.json")
    assert main(["train", str(path), "--nproc", "2"]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err
    assert main(["train", str(path), "--nproc", "3"]) == 2  # global batch 8 does not split over 3 ranks
    assert "not divisible" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
