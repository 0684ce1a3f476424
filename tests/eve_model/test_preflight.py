"""eve_model.preflight: the node-side checks that stop a misconfigured job before any training."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from eve_model.exit_codes import ExitCode
from eve_model.preflight import (
    PreflightError,
    check_dataset,
    check_init_checkpoint,
    check_world_size,
    main,
    preflight_stage,
)
from eve_model.shards import ShardSample, ShardWriter
from eve_model.training.config import tiny_stage_config


def test_world_size_must_match_nodes_times_ranks():
    launched = {"WORLD_SIZE": "4", "EVE_EXPECTED_NODES": "2", "EVE_EXPECTED_RANKS_PER_NODE": "2"}
    assert check_world_size(environ=launched) == 4
    # One node's agent never joined: torchrun formed a world of 2 instead of 4.
    lost_node = dict(launched, WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    with pytest.raises(PreflightError, match=r"world size 2 != 2 nodes x 2 ranks per node = 4"):
        check_world_size(environ=lost_node)
    with pytest.raises(PreflightError):
        check_world_size(expected_nodes=4, expected_ranks_per_node=8, environ={"WORLD_SIZE": "16"})
    assert check_world_size(environ={"WORLD_SIZE": "3"}) == 3  # no expectation exported: nothing to compare


@pytest.fixture
def dataset(tmp_path):
    with ShardWriter(tmp_path / "ds", max_items_per_shard=2) as writer:
        for index in range(3):
            writer.write(ShardSample(key=f"s{index}", meta={"key": f"s{index}", "caption": f"caption {index}"}))
    return tmp_path / "ds", writer.manifest


def test_dataset_hash_must_match_the_manifest(dataset):
    location, manifest = dataset
    assert check_dataset(location, manifest.dataset_hash).num_items == 3
    with pytest.raises(PreflightError, match="not the pinned version"):
        check_dataset(location, "0" * 64)
    with pytest.raises(PreflightError, match="no dataset hash pinned"):
        check_dataset(location, None)
    # Exploratory stage configs may leave the hash unpinned: the manifest must still be readable.
    assert check_dataset(location, None, allow_unpinned=True).dataset_hash == manifest.dataset_hash
    with pytest.raises(PreflightError, match="manifest.json is missing"):
        check_dataset(location.parent / "nowhere", None, allow_unpinned=True)


def test_a_changed_shard_fails_even_with_the_right_manifest_hash(dataset):
    location, manifest = dataset
    shard = location / manifest.shards[0].name
    shard.write_bytes(shard.read_bytes()[:-10] + b"x" * 10)
    with pytest.raises(PreflightError, match="content hash"):
        check_dataset(location, manifest.dataset_hash)


def _hf_dir(path, weights: dict[str, bytes] | None = None):
    path.mkdir()
    (path / "config.json").write_text("{}")
    for name, data in (weights or {}).items():
        (path / name).write_bytes(data)
    return path


def test_init_checkpoint_exists_and_loads_without_unpickling(tmp_path):
    model_dir = _hf_dir(tmp_path / "final")
    save_file({"weight": torch.ones(2, 2)}, str(model_dir / "model.safetensors"))
    torch.save({"weight": torch.zeros(3)}, model_dir / "pytorch_model.bin")
    (model_dir / "training_args.bin").write_bytes(pickle.dumps(Exploit(tmp_path / "exploited")))  # not a model file
    assert check_init_checkpoint(model_dir) == [str(model_dir / "model.safetensors"), str(model_dir / "pytorch_model.bin")]

    with pytest.raises(PreflightError, match="does not exist"):
        check_init_checkpoint(tmp_path / "missing")
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes())
    with pytest.raises(PreflightError, match="not an HF model directory"):
        check_init_checkpoint(no_config)
    with pytest.raises(PreflightError, match="no weight files"):
        check_init_checkpoint(_hf_dir(tmp_path / "empty"))
    truncated = _hf_dir(tmp_path / "truncated", {"model.safetensors": (model_dir / "model.safetensors").read_bytes()[:20]})
    with pytest.raises(PreflightError, match="does not load"):
        check_init_checkpoint(truncated)
    # A pickle that would run code is refused by weights_only loading, as a file or in a directory.
    hostile = tmp_path / "hostile.pt"
    hostile.write_bytes(pickle.dumps(Exploit(tmp_path / "exploited")))
    with pytest.raises(PreflightError, match="does not load"):
        check_init_checkpoint(hostile)
    with pytest.raises(PreflightError, match="does not load"):
        check_init_checkpoint(_hf_dir(tmp_path / "hostile", {"pytorch_model.bin": hostile.read_bytes()}))
    assert not (tmp_path / "exploited").exists()


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_command_exits_2_with_the_reason(dataset, capsys, monkeypatch):
    location, manifest = dataset
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("EVE_EXPECTED_NODES", "1")
    monkeypatch.setenv("EVE_EXPECTED_RANKS_PER_NODE", "2")
    assert main(["--dataset", str(location), "--dataset-hash", manifest.dataset_hash]) == ExitCode.COMPLETED
    assert main(["--dataset", str(location), "--dataset-hash", "f" * 64]) == ExitCode.CONFIG_ERROR == 2
    assert "cannot start" in capsys.readouterr().err


def test_stage_preflight_runs_every_check_and_returns_what_the_trainer_needs(tmp_path):
    """Dataset of 16 samples (global batch 8): world size, batch split, init checkpoint, dataset hash."""
    with ShardWriter(tmp_path / "ds", max_items_per_shard=8) as writer:
        for index in range(16):
            writer.write(ShardSample(key=f"s{index:02d}", meta={"key": f"s{index}", "caption": "c"}))
    init = _hf_dir(tmp_path / "init")
    save_file({"weight": torch.ones(2)}, str(init / "model.safetensors"))
    config = tiny_stage_config(2, str(tmp_path / "out"), str(tmp_path / "ds"), writer.manifest.dataset_hash,
                               init_checkpoint=str(init), num_epochs=1)
    launched = {"WORLD_SIZE": "2", "EVE_EXPECTED_NODES": "1", "EVE_EXPECTED_RANKS_PER_NODE": "2"}

    checked = preflight_stage(config, environ=launched)
    assert (checked.world_size, checked.total_steps, checked.gradient_accumulation_steps) == (2, 2, 2)  # 8 = 2 ranks x 2 x 2
    assert checked.manifest.dataset_hash == writer.manifest.dataset_hash
    assert checked.init_checkpoint_files == (str(init / "model.safetensors"),)
    assert preflight_stage(config.model_copy(update={"num_epochs": None}), environ=launched).total_steps == 20

    failures = {
        "world size 3 != 1 nodes x 2": (config, dict(launched, WORLD_SIZE="3")),
        "not divisible": (config.model_copy(update={"global_batch_size_samples": 6}), launched),
        "does not exist": (config.model_copy(update={"init_checkpoint": str(tmp_path / "missing")}), launched),
        "was expected": (config.model_copy(update={"dataset_hash": "0" * 64}), launched),
        "manifest.json is missing": (config.model_copy(update={"dataset_location": str(tmp_path / "nowhere")}), launched),
        "fewer than one global batch": (config.model_copy(update={"global_batch_size_samples": 32}), launched),
    }
    for message, (bad, environ) in failures.items():
        with pytest.raises(PreflightError, match=message):
            preflight_stage(bad, environ=environ)
    assert not (tmp_path / "out").exists()  # checks only: nothing written


def test_gpus_asked_but_no_cuda_is_refused_with_the_reason(monkeypatch):
    from eve_model.preflight import check_accelerator

    check_accelerator({"EVE_EXPECTED_GPUS_PER_NODE": "0"})  # a CPU job: nothing to check
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PreflightError, match=r"asked for 8 GPU\(s\) per node but CUDA is not available on node n7"):
        check_accelerator({"EVE_EXPECTED_GPUS_PER_NODE": "8", "SLURMD_NODENAME": "n7", "CUDA_VISIBLE_DEVICES": ""})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with pytest.raises(PreflightError, match="runs 8 ranks but sees 4 GPU"):
        check_accelerator({"EVE_EXPECTED_GPUS_PER_NODE": "8", "LOCAL_WORLD_SIZE": "8"})


def test_a_clip_teacher_must_be_a_local_model_directory(tmp_path):
    import json

    from eve_model.preflight import check_teacher

    def stage1(teacher_path):
        return tiny_stage_config(1, str(tmp_path / "o"), "/d", init_checkpoint="/base",
                                 model_overrides={"teacher_kind": "clip", "teacher_path": teacher_path})

    with pytest.raises(PreflightError, match="'openai/clip-vit-large-patch14-336' is not a local model directory"):
        check_teacher(stage1("openai/clip-vit-large-patch14-336"))
    local = tmp_path / "clip"
    local.mkdir()
    (local / "config.json").write_text("{}")
    assert check_teacher(stage1(str(local))) == str(local)
    # Stages 2-3 read the teacher from the config saved with their init checkpoint.
    parent = tmp_path / "stage1-final"
    parent.mkdir()
    (parent / "config.json").write_text(json.dumps({"teacher_kind": "clip", "teacher_path": "openai/clip"}))
    with pytest.raises(PreflightError, match="'openai/clip' is not a local model directory"):
        check_teacher(tiny_stage_config(2, str(tmp_path / "o2"), "/d", init_checkpoint=str(parent)))
    assert check_teacher(tiny_stage_config(1, str(tmp_path / "o"), "/d", init_checkpoint="/base")) is None  # EfficientNet ships in a package
