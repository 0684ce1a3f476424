"""Rank discovery for the three ways the entry point is started: torchrun, srun, no launcher."""

from __future__ import annotations

import pytest

from eve_model.training.runtime import discover_distributed_env

_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
              "SLURM_LOCALID", "SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NODELIST")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in _VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_no_launcher_is_a_world_of_one_on_a_free_loopback_port(monkeypatch):
    env = discover_distributed_env()
    assert (env.rank, env.local_rank, env.world_size, env.launcher) == (0, 0, 1, "none")
    import os

    assert os.environ["MASTER_ADDR"] == "127.0.0.1" and int(os.environ["MASTER_PORT"]) > 0


def test_torchrun_variables_are_taken_as_they_are(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    env = discover_distributed_env()
    assert (env.rank, env.local_rank, env.world_size, env.launcher) == (3, 1, 4, "torchrun")


def test_srun_tasks_map_to_ranks_with_a_port_per_job(monkeypatch):
    import os

    values = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "1234", "MASTER_ADDR": "node01"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    env = discover_distributed_env()
    assert (env.rank, env.local_rank, env.world_size, env.launcher) == (5, 1, 8, "slurm")
    assert os.environ["MASTER_PORT"] == str(20000 + 1234) and os.environ["MASTER_ADDR"] == "node01"
