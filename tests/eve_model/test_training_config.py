"""Stage config: presets, derived values, hashing, and bad configs that must fail before any compute."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from eve_model.training.config import (
    StageConfig,
    StageConfigError,
    eve_7b_stage_config,
    preset_stage_config,
    tiny_stage_config,
)
from eve_model.exit_codes import ExitCode
from eve_model.training.engine import cosine_with_warmup, resolve_deepspeed_config
from tests.eve_model.training_datasets import REPO_ROOT, subprocess_env, write_tiny_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    location = tmp_path_factory.mktemp("data") / "ds"
    manifest = write_tiny_dataset(location, num_samples=16, items_per_shard=8)
    return location, manifest


def test_eve_7b_presets_follow_the_paper():
    expected = {1: (512, 4e-4, 0.03), 2: (512, 4e-5, 0.01), 3: (128, 2e-5, 0.01)}
    for stage, (batch, lr, warmup) in expected.items():
        cfg = eve_7b_stage_config(stage, "/out", "/data", init_checkpoint="/init")
        assert cfg.global_batch_size_samples == batch
        assert set(cfg.learning_rates.values()) == {lr}
        assert cfg.warmup_ratio == warmup
        assert (cfg.zero_stage, cfg.precision, cfg.weight_decay, cfg.max_sequence_length_tokens) == (3, "bf16", 0.0, 2048)
        assert cfg.num_epochs == 1
    assert "llm" not in eve_7b_stage_config(1, "/o", "/d", init_checkpoint="/i").trainable_groups
    assert eve_7b_stage_config(3, "/o", "/d", init_checkpoint="/i").template == "vicuna_v1"
    # 32 GPUs x 16 x 1 as the release scripts; 16 GPUs accumulate 2.
    assert eve_7b_stage_config(1, "/o", "/d", init_checkpoint="/i").gradient_accumulation_steps(16) == 2


def test_tiny_presets_keep_the_paper_lr_ratios_and_round_trip_through_json(tmp_path):
    lrs = {s: tiny_stage_config(s, "/o", "/d", init_checkpoint="/i").learning_rates for s in (1, 2, 3)}
    assert lrs[1]["pel"] == pytest.approx(10 * lrs[2]["pel"])
    assert lrs[3]["llm"] == pytest.approx(lrs[2]["llm"] / 2)
    cfg = preset_stage_config("tiny", 2, output_dir="/o", dataset_location="/d", init_checkpoint="/i")
    path = cfg.write(tmp_path / "c.json")
    assert StageConfig.read(path) == cfg
    assert StageConfig.read(path).content_hash() == cfg.content_hash()


def test_content_hash_ignores_names_and_paths_but_not_hyperparameters():
    base = tiny_stage_config(2, "/o", "/d", init_checkpoint="/i")
    assert base.model_copy(update={"run_name": "x", "output_dir": "/elsewhere"}).content_hash() == base.content_hash()
    assert tiny_stage_config(2, "/o", "/d", init_checkpoint="/i", seed=1).content_hash() != base.content_hash()
    assert tiny_stage_config(2, "/o", "/d", init_checkpoint="/i", max_steps=21).content_hash() != base.content_hash()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"stage": 4}, "unknown stage 4; expected one of base-llm, 1, 2, 3"),
        ({"stage": 1, "init_checkpoint": None}, "needs init_checkpoint"),
        ({"stage": 1, "trainable_groups": ["pel", "llm"], "learning_rates": {"pel": 1e-3, "llm": 1e-3}}, "keeps the LLM frozen"),
        ({"stage": 3, "template": "plain"}, "template must be 'vicuna_v1'"),
        ({"learning_rates": {"pel": 1e-3}}, "no learning rate"),
        ({"zero_offload": True, "zero_stage": 2}, "zero_offload needs zero_stage 3"),
        ({"max_steps": None, "num_epochs": None}, "max_steps or num_epochs"),
        ({"unknown_field": 1}, "Extra inputs are not permitted"),
    ],
)
def test_inconsistent_configs_are_rejected_on_construction(overrides, message):
    values = tiny_stage_config(2, "/o", "/d", init_checkpoint="/i").to_json_dict()
    values.update(overrides)
    with pytest.raises(ValidationError, match=message):
        StageConfig.model_validate(values)


def test_batch_that_does_not_divide_the_world_size_is_a_clear_error():
    cfg = tiny_stage_config(2, "/o", "/d", init_checkpoint="/i", global_batch_size_samples=10, micro_batch_size_samples=2)
    assert cfg.gradient_accumulation_steps(1) == 5
    with pytest.raises(StageConfigError, match="not divisible .* world size 2"):
        cfg.gradient_accumulation_steps(2)


def test_deepspeed_templates_resolve_without_leftover_auto_values():
    for zero_stage, offload in ((0, False), (1, False), (2, False), (3, False), (3, True)):
        cfg = tiny_stage_config(2, "/o", "/d", init_checkpoint="/i", zero_stage=zero_stage, zero_offload=offload, precision="bf16")
        resolved = resolve_deepspeed_config(cfg, world_size=2, accumulation=2, hidden_size=128)
        assert "auto" not in json.dumps(resolved)
        assert resolved["zero_optimization"]["stage"] == zero_stage
        assert resolved["train_batch_size"] == 8 == resolved["train_micro_batch_size_per_gpu"] * 2 * 2
        assert resolved["bf16"]["enabled"] is True


def test_cosine_schedule_warms_up_then_decays_to_zero():
    factor = cosine_with_warmup(warmup_steps=2, total_steps=10)
    values = [factor(step) for step in range(11)]
    assert values[:3] == [0.0, 0.5, 1.0]
    assert all(a >= b for a, b in zip(values[2:], values[3:]))
    assert values[10] == pytest.approx(0.0)
    assert values[6] == pytest.approx(0.5)  # halfway through the decay


def test_entry_point_exits_2_before_compute_on_bad_configs(dataset, tmp_path):
    location, manifest = dataset
    base = tiny_stage_config("base-llm", str(tmp_path / "o"), str(location), "f" * 64)
    cases = {
        "hash.json": json.dumps(base.to_json_dict()),
        "stage.json": json.dumps({**base.to_json_dict(), "stage": "pre-align"}),
        "init.json": json.dumps({**base.to_json_dict(), "stage": 2, "init_checkpoint": str(tmp_path / "missing"), "template": "plain",
                                 "trainable_groups": ["pel", "aligning", "llm"], "learning_rates": {"pel": 1, "aligning": 1, "llm": 1}}),
        "batch.json": json.dumps({**base.to_json_dict(), "dataset_hash": manifest.dataset_hash, "global_batch_size_samples": 6}),
        "world.json": json.dumps({**base.to_json_dict(), "dataset_hash": manifest.dataset_hash}),
        "notjson.json": "{",
    }
    expected = {
        "hash.json": "was expected",
        "stage.json": "unknown stage 'pre-align'",
        "init.json": "init checkpoint " + str(tmp_path / "missing") + " does not exist",
        "batch.json": "not divisible",
        "world.json": "world size 2 != 1 nodes x 4 ranks per node",
        "notjson.json": "not valid JSON",
    }
    preflight_failures = {"hash.json", "init.json", "batch.json", "world.json"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        # WORLD_SIZE=2 without a launcher checks divisibility as torchrun --nproc 2 would; no group is formed.
        env = subprocess_env(tmp_path / "home", RANK="0", WORLD_SIZE="2", LOCAL_RANK="0")
        if name == "world.json":  # the backend asked for 4 ranks on one node; 2 joined
            env.update(EVE_EXPECTED_NODES="1", EVE_EXPECTED_RANKS_PER_NODE="4")
        result = subprocess.run([sys.executable, "-m", "eve_model.train", str(tmp_path / name)], env=env,
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == ExitCode.CONFIG_ERROR, (name, result.stderr[-2000:])
        assert expected[name] in result.stderr, (name, result.stderr[-2000:])
        if name in preflight_failures:  # one clear line, and nothing heavy was loaded first
            assert result.stderr.strip().splitlines() == [f"[eve.train] rank 0: cannot start: {result.stderr.split('cannot start: ', 1)[1].strip()}"]
    assert not (tmp_path / "o").exists()  # nothing was written: the checks ran before any compute


def test_entry_point_runs_the_preflight_once_and_hands_its_result_to_the_trainer(dataset, tmp_path, monkeypatch):
    import eve_model.preflight
    import eve_model.training.engine
    import eve_model.training.runtime
    from eve_model.train import main

    location, manifest = dataset
    config_path = tiny_stage_config("base-llm", str(tmp_path / "o"), str(location), manifest.dataset_hash).write(tmp_path / "c.json")
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "EVE_HOME": str(tmp_path / "home")}.items():
        monkeypatch.setenv(name, value)
    calls = []
    real_preflight = eve_model.preflight.preflight_stage
    monkeypatch.setattr(eve_model.preflight, "preflight_stage", lambda config: calls.append("preflight") or real_preflight(config))

    class Trainer:
        def __init__(self, config, env, device_type, checked):
            calls.append(("trainer", checked.total_steps, checked.gradient_accumulation_steps, checked.manifest.dataset_hash))

        def run(self):
            return ExitCode.COMPLETED

    monkeypatch.setattr(eve_model.training.engine, "StageTrainer", Trainer)
    monkeypatch.setattr(eve_model.training.runtime, "configure_accelerator_env", lambda: "cpu")
    monkeypatch.setattr(eve_model.training.runtime, "init_process_group", lambda device_type, local_rank: calls.append("group"))
    monkeypatch.setattr(eve_model.training.runtime, "shutdown_process_group", lambda synchronise=True: None)
    assert main([str(config_path)]) == ExitCode.COMPLETED
    # Global batch 8, micro-batch 2 x 2 ranks: accumulation 2.
    config = StageConfig.read(config_path)
    assert calls == ["preflight", "group", ("trainer", config.total_steps(16), 2, manifest.dataset_hash)]


def test_model_overrides_reach_the_eve_config_preset():
    from eve_model.training.stage_model import eve_config_for_preset

    cfg = eve_7b_stage_config(1, "/o", "/d", init_checkpoint="/vicuna",
                              model_overrides={"teacher_path": "/models/clip-vit-large-patch14-336"})
    assert StageConfig.model_validate(cfg.to_json_dict()).model_overrides == cfg.model_overrides
    eve_config = eve_config_for_preset(cfg.model_preset, cfg.model_overrides)
    assert eve_config.teacher_path == "/models/clip-vit-large-patch14-336"
    assert eve_config.text_config.hidden_size == 4096
    assert cfg.content_hash() != eve_7b_stage_config(1, "/o", "/d", init_checkpoint="/vicuna").content_hash()
