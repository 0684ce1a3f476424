"""``eve train``: preset printing, and stage runs as local-backend jobs (preflight, log, signals)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from cli.main import main
from eve_model.exit_codes import ExitCode
from eve_model.training.config import StageConfig, tiny_stage_config
from eve_model.training.engine import HANG_AFTER_STEP_ENV
from tests.eve_model.training_datasets import (
    REPO_ROOT,
    kill_job,
    read_jsonl,
    subprocess_env,
    wait_for_step,
    write_tiny_dataset,
)


def test_preset_prints_a_config_that_parses(capsys, eve_home):
    assert main(["train", "preset", "--stage", "2", "--preset", "eve_7b", "--dataset", "s3://bucket/v3",
                 "--init-checkpoint", "/ckpt/stage1/final"]) == 0
    config = StageConfig.model_validate(json.loads(capsys.readouterr().out))
    assert (config.stage, config.global_batch_size_samples, config.zero_stage) == ("2", 512, 3)
    assert config.init_checkpoint == "/ckpt/stage1/final"
    assert config.output_dir == str(eve_home / "runs" / "eve_7b-stage-2")


def test_preset_errors_exit_2(capsys, eve_home):
    assert main(["train", "preset", "--stage", "base-llm", "--preset", "eve_7b"]) == 2
    assert "no base-llm stage" in capsys.readouterr().err
    assert main(["train", "preset", "--stage", "7", "--preset", "tiny"]) == 2
    assert main(["train", "preset", "--stage", "1", "--preset", "huge"]) == 2


def test_unreadable_config_and_bad_rank_count_exit_2_without_a_job(tmp_path, capsys, eve_home):
    (tmp_path / "broken.json").write_text("{")
    assert main(["train", str(tmp_path / "broken.json")]) == ExitCode.CONFIG_ERROR
    assert "not valid JSON" in capsys.readouterr().err
    path = tiny_stage_config("base-llm", str(tmp_path / "out"), str(tmp_path / "ds")).write(tmp_path / "stage.json")
    assert main(["train", str(path), "--nproc", "0"]) == ExitCode.CONFIG_ERROR
    assert "--nproc must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_jobs_preflight_refuses_a_bad_config_before_any_compute(tmp_path, capsys, eve_home):
    """The checks are the job's own (once per rank): their line streams to the terminal, the exit
    code is CONFIG_ERROR, and nothing but the job's log is written."""
    config = tiny_stage_config("base-llm", str(tmp_path / "out"), str(tmp_path / "no-dataset"))
    path = config.write(tmp_path / "stage.json")
    assert main(["train", str(path), "--nproc", "2"]) == ExitCode.CONFIG_ERROR
    out, err = capsys.readouterr()
    assert "cannot start: dataset" in out and "manifest.json is missing" in out
    assert "exit 2 (config error)" in err
    assert main(["train", str(path), "--nproc", "3"]) == ExitCode.CONFIG_ERROR  # global batch 8 does not split over 3 ranks
    out, _ = capsys.readouterr()
    # Each rank checks once; torchrun stops the others after the first one exits, so 1 to 3 lines.
    assert 1 <= out.count("not divisible") <= 3
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["logs"]


@pytest.mark.slow
def test_sigterm_reaches_the_job_which_checkpoints_exits_75_and_resumes(tmp_path):
    """`eve train` passes SIGTERM on to its local job: the ranks flush a checkpoint, the command exits
    75 (requeue) with the job's log on its stdout, and the same command then finishes the stage."""
    home = tmp_path / "home"
    home.mkdir()
    manifest = write_tiny_dataset(tmp_path / "ds", num_samples=16, items_per_shard=8)
    config = tiny_stage_config("base-llm", str(tmp_path / "out"), str(tmp_path / "ds"), manifest.dataset_hash,
                               max_steps=4, checkpoint_interval_steps=100, global_batch_size_samples=4,
                               micro_batch_size_samples=1, max_sequence_length_tokens=96, wandb_mode="disabled")
    path = config.write(tmp_path / "stage.json")
    command = [sys.executable, "-m", "cli.main", "train", str(path), "--nproc", "2"]
    log = open(tmp_path / "eve-train.out", "w")
    process = subprocess.Popen(command, env=subprocess_env(home, **{HANG_AFTER_STEP_ENV: "2"}), cwd=REPO_ROOT,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_step(tmp_path / "out" / "metrics.jsonl", 2, process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=180) == ExitCode.REQUEUE
    finally:
        if process.poll() is None:
            kill_job(process)
    output = (tmp_path / "eve-train.out").read_text()
    assert "checkpoint at step 2 written; exiting 75 (requeue)" in output, output[-3000:]
    assert "ended PREEMPTED, exit 75 (requeue)" in output, output[-3000:]
    assert (tmp_path / "out" / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    assert not (tmp_path / "out" / "final").exists()

    resumed = subprocess.run(command, env=subprocess_env(home), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == ExitCode.COMPLETED, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "complete after 4 steps" in resumed.stdout
    assert [m["step"] for m in read_jsonl(tmp_path / "out" / "metrics.jsonl")] == [1, 2, 3, 4]
