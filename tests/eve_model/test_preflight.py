"""eve_model.preflight: the node-side checks that stop a misconfigured job before any training."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from eve_model.preflight import (
    PreflightError,
    check_dataset,
    check_init_checkpoint,
    check_world_size,
    main,
)
from eve_model.shards import ShardSample, ShardWriter


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
    assert check_dataset(location, manifest.dataset_hash) == 3
    with pytest.raises(PreflightError, match="not the pinned version"):
        check_dataset(location, "0" * 64)
    with pytest.raises(PreflightError, match="no dataset hash pinned"):
        check_dataset(location, None)


def test_a_changed_shard_fails_even_with_the_right_manifest_hash(dataset):
    location, manifest = dataset
    shard = location / manifest.shards[0].name
    shard.write_bytes(shard.read_bytes()[:-10] + b"x" * 10)
    with pytest.raises(PreflightError, match="content hash"):
        check_dataset(location, manifest.dataset_hash)


def test_init_checkpoint_exists_and_loads_without_unpickling(tmp_path):
    model_dir = tmp_path / "final"
    model_dir.mkdir()
    save_file({"weight": torch.ones(2, 2)}, str(model_dir / "model.safetensors"))
    assert check_init_checkpoint(model_dir) == [str(model_dir / "model.safetensors")]

    with pytest.raises(PreflightError, match="does not exist"):
        check_init_checkpoint(tmp_path / "missing")
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes()[:20])
    with pytest.raises(PreflightError, match="does not load"):
        check_init_checkpoint(truncated)
    # A pickle that would run code is refused by weights_only loading.
    hostile = tmp_path / "hostile.pt"
    hostile.write_bytes(pickle.dumps(Exploit(tmp_path / "exploited")))
    with pytest.raises(PreflightError, match="does not load"):
        check_init_checkpoint(hostile)
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
    assert main(["--dataset", str(location), "--dataset-hash", manifest.dataset_hash]) == 0
    assert main(["--dataset", str(location), "--dataset-hash", "f" * 64]) == 2
    assert "cannot start" in capsys.readouterr().err
