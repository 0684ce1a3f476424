"""Drills of the 7B-path fixes on the real local SLURM cluster (2 emulated nodes, slurmdbd, fake GPUs):

- the preflight on the allocation refuses in seconds, with one line: GPUs asked but no CUDA; a node
  that does not see the shared output directory; a CLIP teacher given as a hub id;
- the flush survives: a pre-timeout USR1 on a 2-node stage whose checkpoint save takes longer than
  torchrun's default 30 s shutdown timeout completes the checkpoint and the stage resumes at it;
- with W&B in its default (offline) mode, ``scontrol requeue`` and ``scancel`` (SIGTERM to every
  process of the job, W&B's service included) find the checkpoint written and exit 75 within seconds,
  and the flow is told every scheduler state, every attempt and where a cancelled stage resumes.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path

import pytest

from eve_model.exit_codes import ExitCode
from eve_model.identity import weights_sha256
from eve_model.training.config import tiny_stage_config
from eve_model.training.engine import HANG_AFTER_STEP_ENV, SAVE_TIMINGS_PATH, SLOW_SAVE_ENV
from tasks.platform import PlatformSettings
from tasks.stages import StageFailed, TrainingParameters, place_stage, run_stage
from tasks.submit.run import JobFailed, run_job_to_end
from tasks.submit.slurm import SlurmBackend, render_sbatch_script
from tasks.submit.spec import JobSpec, JobState
from tests.eve_model.training_datasets import REPO_ROOT, subprocess_env, write_tiny_dataset
from tests.eve_model.training_datasets import run_stage as run_config_locally

pytestmark = pytest.mark.slow

WORKLOADS = Path(__file__).parent / "workloads"
COMMON = dict(global_batch_size_samples=4, micro_batch_size_samples=1, max_sequence_length_tokens=96)
JOB_ENV_KEYS = ("EVE_HOME", "WANDB_MODE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PYTHONPATH", "TORCH_EXTENSIONS_DIR")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A platform home, a tiny dataset and a bootstrapped tiny base LLM (1 rank, locally)."""
    root = tmp_path_factory.mktemp("slurm-drills")
    home = root / "home"
    home.mkdir()
    manifest = write_tiny_dataset(root / "ds", num_samples=24, items_per_shard=8)
    base = tiny_stage_config("base-llm", str(root / "base"), str(root / "ds"), manifest.dataset_hash, max_steps=2,
                             wandb_mode="disabled", **COMMON)
    bootstrap = run_config_locally(base, root / "base.json", home, nproc=1)
    assert bootstrap.returncode == 0, bootstrap.stderr[-3000:]
    return {"root": root, "home": home, "ds": str(root / "ds"), "hash": manifest.dataset_hash, "base": root / "base" / "final"}


@pytest.fixture
def platform_home(work, monkeypatch):
    monkeypatch.setenv("EVE_HOME", str(work["home"]))
    return work["home"]


def _job_template(work, log_dir: Path, **fields) -> JobSpec:
    environment = subprocess_env(work["home"])
    values = dict(
        name="drill", command=["placeholder"], workdir=REPO_ROOT, log_dir=log_dir, nodes=1, tasks_per_node=2,
        time_limit_minutes=10, max_resubmits=0, checkpoint_save_seconds=10, max_step_seconds=5,
        env={key: environment[key] for key in JOB_ENV_KEYS},
    )
    values.update(fields)
    return JobSpec(**values)


def _stage1(work, name: str, **overrides):
    values = dict(COMMON, init_checkpoint=str(work["base"]), max_steps=8, checkpoint_interval_steps=100)
    values.update(overrides)
    return tiny_stage_config(1, str(work["root"] / name), work["ds"], work["hash"], **values)


def _run_in_background(planned, training) -> tuple[threading.Thread, dict]:
    outcome: dict = {"events": []}

    def target() -> None:
        try:
            outcome["result"] = run_stage(planned, training, poll_seconds=0.5, timeout_seconds=600,
                                          on_event=outcome["events"].append)
        except Exception as error:  # handed to the test thread
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def _job_id(outcome: dict, timeout_seconds: float = 60) -> str:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        for line in outcome["events"]:
            if "as SLURM job " in line:
                return line.split("as SLURM job ")[1].split()[0]
        time.sleep(0.2)
    raise AssertionError(f"no submission event: {outcome}")


def _wait_for_step(output_dir: Path, step: int, outcome: dict, timeout_seconds: float = 240) -> None:
    metrics = output_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if metrics.exists() and any(json.loads(line)["step"] >= step for line in metrics.read_text().splitlines() if line.strip()):
            return
        assert "error" not in outcome and "result" not in outcome, outcome
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached")


def _rank_codes(log_dir: Path, job_id: str, restart: int) -> dict[str, tuple[int, float]]:
    marker_dir = log_dir / "markers" / f"{job_id}.{restart}"
    return {p.stem: (int(p.read_text()), p.stat().st_mtime) for p in sorted(marker_dir.glob("rank-*.exit"))}


def _planned(work, config):
    return place_stage(config, PlatformSettings.load(), parent_weights_sha256=weights_sha256(work["base"]))


# ---- the preflight on the allocation ------------------------------------------------------------


def _expect_refusal(slurm_cluster, spec: JobSpec, needle: str) -> str:
    started = time.monotonic()
    with pytest.raises(JobFailed) as failure:
        run_job_to_end(spec, "slurm", {"slurm_conf": str(slurm_cluster.slurm_conf)}, poll_seconds=0.5, timeout_seconds=240)
    status = failure.value.status
    log = Path(failure.value.handle.log_path).read_text()
    assert status.state == JobState.FAILED and status.exit_code == ExitCode.CONFIG_ERROR, (status, log[-3000:])
    refusals = [line for line in log.splitlines() if "cannot start" in line]
    assert len(refusals) == 1 and needle in refusals[0], log[-3000:]
    return f"{refusals[0]} ({time.monotonic() - started:.0f} s)"


def test_preflight_refuses_a_gpu_job_without_cuda(slurm_cluster, work, platform_home):
    """The job asks SLURM for an a100 (the test cluster schedules fake ones) and finds no CUDA."""
    config = _stage1(work, "pf-gpu")
    config_path = config.write(work["root"] / "pf-gpu.json")
    spec = _job_template(work, work["root"] / "pf-gpu-logs", gpus_per_node=1, gpu_type="a100",
                         runtime_environment=sys.prefix,
                         command=[sys.executable, "-m", "eve_model.train", str(config_path)])
    assert "#SBATCH --gpus-per-node=a100:1" in render_sbatch_script(spec)
    line = _expect_refusal(slurm_cluster, spec, "CUDA is not available on node node1")
    assert "asked for 1 GPU(s) per node" in line


def test_preflight_refuses_a_node_without_the_shared_output_directory(slurm_cluster, work, platform_home):
    """node2 mounts another (empty) filesystem at the output directory, as a node without the
    shared mount would: rank 0's marker is not there, and every rank refuses before training."""
    config = _stage1(work, "pf-shared")
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    config_path = config.write(work["root"] / "pf-shared.json")
    spec = _job_template(work, work["root"] / "pf-shared-logs", nodes=2, tasks_per_node=1, command=[
        str(WORKLOADS / "private_dir.sh"), "node2", config.output_dir, sys.executable, "-m", "eve_model.train", str(config_path),
    ])
    line = _expect_refusal(slurm_cluster, spec, "do not see the output directory")
    # The rendezvous decides which node holds rank 0: the line names the node that wrote the
    # marker and the one that cannot see it, whichever way round.
    assert re.search(r"on node\(s\) (node1|node2) do not see .* rank 0 \(node (node1|node2)\)", line)
    assert "node1" in line and "node2" in line
    assert not (Path(config.output_dir) / "metrics.jsonl").exists()


def test_preflight_refuses_a_hub_id_as_teacher(slurm_cluster, work, platform_home):
    config = _stage1(work, "pf-teacher", model_overrides={"teacher_kind": "clip", "teacher_path": "openai/clip-vit-large-patch14-336"})
    config_path = config.write(work["root"] / "pf-teacher.json")
    spec = _job_template(work, work["root"] / "pf-teacher-logs", tasks_per_node=1,
                         command=[sys.executable, "-m", "eve_model.train", str(config_path)])
    _expect_refusal(slurm_cluster, spec, "the CLIP teacher 'openai/clip-vit-large-patch14-336' is not a local model directory")


# ---- the flush survives ---------------------------------------------------------------------------


def test_two_node_flush_outlasts_torchruns_default_timeout_and_the_stage_resumes_there(slurm_cluster, work, platform_home):
    """A 2-node stage gets the pre-timeout USR1 (sent as slurmctld sends it: to the batch shell)
    while its save takes 35 s, longer than torchrun's default 30 s shutdown timeout; the derived
    timeout (step + save budget + margin) lets the checkpoint complete, the attempt ends resumable
    (75), and the resubmitted attempt resumes at that step and completes the stage."""
    config = _stage1(work, "flush", max_steps=6)
    template = _job_template(
        work, work["root"] / "unused", nodes=2, tasks_per_node=1, checkpoint_save_seconds=45, max_step_seconds=5,
        max_resubmits=1, env={**_job_template(work, work["root"]).env, HANG_AFTER_STEP_ENV: "3", SLOW_SAVE_ENV: "35"},
    )
    assert template.shutdown_timeout_seconds > 35 > 30
    training = TrainingParameters(backend="slurm", backend_options={"slurm_conf": str(slurm_cluster.slurm_conf)}, job=template)
    planned = _planned(work, config)
    thread, outcome = _run_in_background(planned, training)
    job_id = _job_id(outcome)
    _wait_for_step(planned.output_dir, 3, outcome)
    slurm_cluster.run("scancel", "--batch", "--signal=USR1", job_id)
    thread.join(600)

    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    log_dir = planned.output_dir / "logs"
    first = json.loads((log_dir / f"exit-{job_id}.json").read_text())
    assert first["exit_code"] == ExitCode.REQUEUE and first["signal"] == "USR1"
    assert [code for code, _ in _rank_codes(log_dir, job_id, 0).values()] == [ExitCode.REQUEUE] * 2  # nobody was killed
    saves = [json.loads(line) for line in (planned.output_dir / SAVE_TIMINGS_PATH).read_text().splitlines()]
    assert [s["step"] for s in saves] == [3] and saves[0]["seconds"] >= 35
    assert [a.state for a in result.attempts] == [JobState.TIMED_OUT, JobState.COMPLETED]
    assert len(result.job_ids) == 2 and result.job_ids[0] == job_id
    second_log = (log_dir / f"slurm-{result.job_ids[1]}.log").read_text()
    assert "resumed at step 3" in second_log
    assert json.loads((Path(result.model_dir) / "final_metrics.json").read_text())["completed_steps"] == 6
    assert any("resubmitted as slurm job" in line for line in outcome["events"])


# ---- preemption with W&B in its default mode -----------------------------------------------------


def test_requeue_and_cancel_with_wandb_flush_within_seconds_and_the_flow_hears_every_state(slurm_cluster, work, platform_home):
    training = TrainingParameters(backend="slurm", backend_options={"slurm_conf": str(slurm_cluster.slurm_conf)},
                                  job=_job_template(work, work["root"] / "unused"))
    # -- scontrol requeue: the same job id comes back and resumes
    config = _stage1(work, "requeue", max_steps=10)
    assert config.wandb_mode == "offline"  # the default
    planned = _planned(work, config)
    thread, outcome = _run_in_background(planned, training)
    job_id = _job_id(outcome)
    _wait_for_step(planned.output_dir, 2, outcome)
    assert (planned.output_dir / "wandb_run_id").exists()
    requeued_at = time.time()
    slurm_cluster.run("scontrol", "requeue", job_id)
    thread.join(600)

    assert "error" not in outcome, outcome.get("error")
    log_dir = planned.output_dir / "logs"
    first = _rank_codes(log_dir, job_id, 0)
    assert [code for code, _ in first.values()] == [ExitCode.REQUEUE] * 2
    assert max(mtime for _, mtime in first.values()) - requeued_at < 10, "the flush took too long"
    assert (planned.output_dir / "checkpoints" / "latest").exists()
    result = outcome["result"]
    assert result.job_ids == [job_id]
    assert [(a.job_id, a.restart, a.state) for a in result.attempts] == [(job_id, 0, JobState.REQUEUED), (job_id, 1, JobState.COMPLETED)]
    events = "\n".join(outcome["events"])
    assert f"as SLURM job {job_id} (partition default, 1 node(s) x 2 rank(s))" in events
    for needle in ("RUNNING", "REQUEUED (restart 1)", "PENDING", "COMPLETED"):
        assert needle in events, events
    # An offline W&B run was written, and the job did not wait for its dead service.
    assert list((work["home"] / "wandb").glob("wandb/offline-run-*"))

    # -- scancel: the stage fails as cancelled and says where it resumes
    config = _stage1(work, "cancel", max_steps=40)
    planned = _planned(work, config)
    thread, outcome = _run_in_background(planned, training)
    job_id = _job_id(outcome)
    _wait_for_step(planned.output_dir, 2, outcome)
    cancelled_at = time.time()
    slurm_cluster.run("scancel", job_id)
    thread.join(300)

    error = outcome.get("error")
    assert isinstance(error, StageFailed), outcome
    codes = _rank_codes(planned.output_dir / "logs", job_id, 0)
    assert [code for code, _ in codes.values()] == [ExitCode.REQUEUE] * 2
    assert max(mtime for _, mtime in codes.values()) - cancelled_at < 10
    step = int((planned.output_dir / "checkpoints" / "latest").read_text().strip().split("-")[1])
    assert "CANCELLED" in str(error) and "None" not in str(error).split("\n")[0]
    assert f"it resumes from step {step}" in str(error)


# ---- accounting ----------------------------------------------------------------------------------


def test_end_states_come_from_sacct_once_the_controller_forgot_the_job(slurm_cluster, tmp_path):
    backend = SlurmBackend(slurm_conf=slurm_cluster.slurm_conf)
    spec = JobSpec(name="sacct", command=[sys.executable, "-c", "raise SystemExit(3)"], workdir=tmp_path,
                   log_dir=tmp_path / "logs", tasks_per_node=1, time_limit_minutes=5, max_resubmits=0)
    handle = backend.submit(spec)
    assert backend.wait(handle, poll_seconds=0.5, timeout_seconds=120).exit_code == 3
    (tmp_path / "logs" / f"exit-{handle.job_id}.json").unlink()  # only the scheduler's word is left
    deadline = time.monotonic() + 120
    while "JobId=" in slurm_cluster.run("scontrol", "show", "job", handle.job_id, check=False).stdout:
        assert time.monotonic() < deadline, "the controller never purged the job (MinJobAge)"
        time.sleep(2)
    sacct = json.loads(slurm_cluster.run("sacct", "--json", f"--jobs={handle.job_id}").stdout)
    assert [job["job_id"] for job in sacct["jobs"]] == [int(handle.job_id)]
    status = backend.status(handle)
    assert status.state == JobState.FAILED and status.exit_code == 3
