"""The real training entry point through sbatch: a tiny stage 1 with 2 ranks on the test cluster, run as a
platform stage (``tasks.stages.run_stage`` -> ``run_job_to_end`` -> the SLURM backend)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from eve_model.identity import weights_sha256
from eve_model.training.config import tiny_stage_config
from tasks.platform import PlatformSettings
from tasks.stages import TrainingParameters, place_stage, run_stage
from tasks.submit.spec import JobSpec
from tests.eve_model.training_datasets import REPO_ROOT, subprocess_env, write_tiny_dataset
from tests.eve_model.training_datasets import run_stage as run_config_locally  # not tasks.stages.run_stage

pytestmark = pytest.mark.slow

COMMON = dict(global_batch_size_samples=4, micro_batch_size_samples=1, max_sequence_length_tokens=96, wandb_mode="offline")


def test_tiny_stage1_with_two_tasks_through_sbatch_completes_and_loads(slurm_cluster, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("EVE_HOME", str(home))
    manifest = write_tiny_dataset(tmp_path / "ds", num_samples=16, items_per_shard=8)
    # Stage 1 starts from a base LLM: bootstrap one locally (1 rank, a few steps).
    base = tiny_stage_config("base-llm", str(tmp_path / "base"), str(tmp_path / "ds"), manifest.dataset_hash, max_steps=2, **COMMON)
    bootstrap = run_config_locally(base, tmp_path / "base.json", home, nproc=1)
    assert bootstrap.returncode == 0, bootstrap.stderr[-3000:]

    stage1 = tiny_stage_config(
        1, str(tmp_path / "stage1"), str(tmp_path / "ds"), manifest.dataset_hash,
        init_checkpoint=str(tmp_path / "base" / "final"), max_steps=4, **COMMON,
    )
    environment = subprocess_env(home)
    job_template = JobSpec(
        name="tiny retrain",
        command=["placeholder"],
        workdir=REPO_ROOT,
        log_dir=tmp_path / "logs",
        nodes=1,
        tasks_per_node=2,
        time_limit_minutes=10,
        checkpoint_save_seconds=10,
        max_step_seconds=5,
        env={key: environment[key] for key in ("EVE_HOME", "WANDB_MODE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PYTHONPATH", "TORCH_EXTENSIONS_DIR")},
    )
    training = TrainingParameters(backend="slurm", backend_options={"slurm_conf": str(slurm_cluster.slurm_conf)}, job=job_template)
    planned = place_stage(stage1, PlatformSettings.load(), parent_weights_sha256=weights_sha256(tmp_path / "base" / "final"))
    streamed: list[str] = []
    result = run_stage(planned, training, on_log=streamed.append, poll_seconds=1.0, timeout_seconds=600)

    assert result.backend == "slurm" and len(result.job_ids) == 1 and result.job_ids[0].isdigit()
    final = Path(result.model_dir)
    metrics = json.loads((final / "final_metrics.json").read_text())
    assert metrics, "the stage wrote no final metrics"
    from eve_model.modeling_eve import EveForCausalLM
    from eve_model.training.alignment_state import load_alignment_state

    model = EveForCausalLM.from_pretrained(final)
    model.enable_alignment()
    load_alignment_state(model, final)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert "".join(streamed), "the job log was not streamed"
    assert os.environ.get("SLURM_JOB_ID") is None  # nothing leaked into the test process
