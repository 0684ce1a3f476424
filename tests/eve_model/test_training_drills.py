"""Real multi-process DeepSpeed drills on gloo (2 ranks via torchrun, tiny preset).

One chain base-llm -> stage 1 -> stage 2 -> stage 3 is shared by the tests through module-scoped
fixtures; the ZeRO comparison and the kill -9 / resume drill run the cheap text-only base-llm stage.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eve_model.training.config import tiny_stage_config
from eve_model.exit_codes import ExitCode
from eve_model.training.engine import HANG_AFTER_STEP_ENV, SAVE_TIMINGS_PATH
from tests.eve_model.training_datasets import (
    REPO_ROOT,
    kill_job,
    read_jsonl,
    run_stage,
    start_stage,
    subprocess_env,
    torchrun_command,
    wait_for_step,
    write_tiny_dataset,
)

pytestmark = pytest.mark.slow

# Small enough that each EVE stage is a few seconds of compute: 4 samples per step = 2 ranks x
# micro-batch 1 x accumulation 2 (accumulation is exercised on purpose).
COMMON = dict(global_batch_size_samples=4, micro_batch_size_samples=1, max_sequence_length_tokens=96, wandb_mode="offline")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("drills")
    home = root / "home"
    home.mkdir()
    manifest = write_tiny_dataset(root / "ds", num_samples=32, items_per_shard=8)
    return {"root": root, "home": home, "ds": str(root / "ds"), "hash": manifest.dataset_hash}


def _run(work, name, stage, init=None, nproc=2, **overrides):
    cfg = tiny_stage_config(stage, str(work["root"] / name), work["ds"], work["hash"], init_checkpoint=init, **{**COMMON, **overrides})
    result = run_stage(cfg, work["root"] / f"{name}.json", work["home"], nproc=nproc)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return work["root"] / name


@pytest.fixture(scope="module")
def base_zero0(work) -> Path:
    return _run(work, "base-z0", "base-llm", max_steps=8, zero_stage=0, checkpoint_interval_steps=4)


@pytest.fixture(scope="module")
def base_zero2(work) -> Path:
    return _run(work, "base-z2", "base-llm", max_steps=8, zero_stage=2, checkpoint_interval_steps=2, record_data_order=True)


@pytest.fixture(scope="module")
def stage1(work, base_zero0) -> Path:
    # Stages 1 and 3 read the teacher through the feature cache (under ZeRO-2 and ZeRO-3: the cached
    # teacher must stay out of DeepSpeed's partitioning); stage 2 runs the teacher every step.
    return _run(work, "stage1", 1, init=str(base_zero0 / "final"), max_steps=3, zero_stage=2,
                teacher_feature_cache_dir=str(work["root"] / "teacher-cache"))


@pytest.fixture(scope="module")
def stage2(work, stage1) -> Path:
    # Loader workers prepare the steps; a checkpoint is due after every step by the clock (a
    # microsecond interval), none by the step count.
    return _run(work, "stage2", 2, init=str(stage1 / "final"), max_steps=3, zero_stage=0,
                data_loader_workers=2, checkpoint_interval_minutes=1e-6, checkpoint_interval_steps=1000)


@pytest.fixture(scope="module")
def stage3(work, stage2) -> Path:
    """Under ZeRO-3, so that the partitioned save of the final HF directory is exercised too."""
    return _run(work, "stage3", 3, init=str(stage2 / "final"), max_steps=3, zero_stage=3, group_by_modality_length=True,
                teacher_feature_cache_dir=str(work["root"] / "teacher-cache"))


def _final_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "final" / "final_metrics.json").read_text())


def test_base_llm_bootstrap_writes_a_loadable_llama_directory(work, base_zero0):
    from transformers import AutoTokenizer, LlamaForCausalLM

    final = base_zero0 / "final"
    model = LlamaForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    ids = tokenizer("A red circle on a white background.", return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)
    metrics = read_jsonl(base_zero0 / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 9))
    assert metrics[-1]["ce_loss"] < metrics[0]["ce_loss"]  # it learns
    summary = _final_metrics(base_zero0)
    assert summary["inputs"]["dataset_hash"] == work["hash"]
    assert summary["inputs"]["init_weights_sha256"] is None and summary["completed_steps"] == 8
    assert summary["world_size"] == 2 and len(summary["inputs"]["stage_config_hash"]) == 64
    # W&B ran offline with its files under the platform home, and the run id is recorded.
    offline_runs = list((work["home"] / "wandb" / "wandb").glob(f"offline-run-*-{summary['wandb_run_id']}"))
    assert len(offline_runs) == 1


def test_zero2_and_zero0_give_the_same_loss_curve(base_zero0, base_zero2):
    # Same seed, data and hyper-parameters; only the gradient reduction differs (all-reduce vs
    # reduce-scatter of fp32 gradients), so losses agree up to summation order: rtol 1e-4.
    zero0 = [m["loss"] for m in read_jsonl(base_zero0 / "metrics.jsonl")]
    zero2 = [m["loss"] for m in read_jsonl(base_zero2 / "metrics.jsonl")]
    assert len(zero0) == len(zero2) == 8
    assert zero0 == pytest.approx(zero2, rel=1e-4)
    assert zero0[-1] < zero0[0] - 0.5  # not a flat curve that would match trivially
    grad_norms = [m["grad_norm"] for m in read_jsonl(base_zero2 / "metrics.jsonl")]
    assert all(g is not None and g > 0 for g in grad_norms)


def test_kill_9_then_resume_matches_an_uninterrupted_run(work, base_zero2):
    name = "base-z2-killed"
    cfg = tiny_stage_config("base-llm", str(work["root"] / name), work["ds"], work["hash"],
                            **{**COMMON, "max_steps": 8, "zero_stage": 2, "checkpoint_interval_steps": 2, "record_data_order": True})
    run_dir = work["root"] / name
    process = start_stage(cfg, work["root"] / f"{name}.json", work["home"], **{HANG_AFTER_STEP_ENV: "5"})
    try:
        wait_for_step(run_dir / "metrics.jsonl", 5, process)
    finally:
        ranks = kill_job(process)  # kill -9 of the whole job: launcher and both ranks
    assert len(ranks) == 2
    time.sleep(0.5)
    for pid in ranks:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] if Path(f"/proc/{pid}").exists() else "gone"
        assert state in ("gone", "Z"), f"rank {pid} survived the kill ({state})"
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-00000004"
    assert not (run_dir / "final").exists()
    assert max(m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")) == 5  # step 5 ran, was never saved

    resumed = run_stage(cfg, work["root"] / f"{name}.json", work["home"])
    assert resumed.returncode == 0, resumed.stderr[-6000:]
    assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")] == list(range(1, 9))
    for rank in (0, 1):
        # Exact data order: every step saw the same samples as the uninterrupted run; none twice.
        assert read_jsonl(run_dir / f"data_order.rank{rank}.jsonl") == read_jsonl(base_zero2 / f"data_order.rank{rank}.jsonl")
    expected = load_file(base_zero2 / "final" / "model.safetensors")
    actual = load_file(run_dir / "final" / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-6, atol=1e-7, msg=key)
    assert _final_metrics(run_dir)["inputs"]["stage_config_hash"] == _final_metrics(base_zero2)["inputs"]["stage_config_hash"]
    # keep_last_checkpoints=2: the resumed run pruned everything but the two newest step checkpoints.
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*")) == ["step-00000004", "step-00000006"]


def test_sigterm_flushes_a_checkpoint_and_exits_75(work):
    name = "sigterm"
    cfg = tiny_stage_config("base-llm", str(work["root"] / name), work["ds"], work["hash"],
                            **{**COMMON, "max_steps": 8, "checkpoint_interval_steps": 100, "wandb_mode": "disabled"})
    run_dir = work["root"] / name
    # One process without a launcher: the exit code is the job's own.
    process = start_stage(cfg, work["root"] / f"{name}.json", work["home"], nproc=1, **{HANG_AFTER_STEP_ENV: "2"})
    try:
        wait_for_step(run_dir / "metrics.jsonl", 2, process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == ExitCode.REQUEUE
    finally:
        if process.poll() is None:
            kill_job(process)
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    assert json.loads((run_dir / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())["completed_steps"] == 2
    assert not (run_dir / "final").exists()


def test_stage1_trains_pel_and_aligning_layer_and_leaves_the_llm_bit_identical(base_zero0, stage1):
    base = load_file(base_zero0 / "final" / "model.safetensors")
    eve = load_file(stage1 / "final" / "model.safetensors")
    llm = {k[len("language_model."):]: v for k, v in eve.items() if k.startswith("language_model.")}
    assert llm.keys() == base.keys()
    for key, tensor in base.items():
        assert torch.equal(llm[key], tensor), key
    metrics = read_jsonl(stage1 / "metrics.jsonl")
    assert all(m["alignment_loss"] is not None for m in metrics)
    assert set(metrics[-1]["learning_rate"]) == {"pel", "aligning"}
    assert (stage1 / "final" / "aligning_layer.safetensors").exists()
    summary = _final_metrics(stage1)
    assert summary["inputs"]["init_weights_sha256"] == _final_metrics(base_zero0)["weights_sha256"]


def _load_eve(final: Path):
    from eve_model.modeling_eve import EveForCausalLM
    from eve_model.processing_eve import EveProcessor
    from eve_model.training.alignment_state import load_alignment_state

    model = EveForCausalLM.from_pretrained(final)
    model.enable_alignment()
    load_alignment_state(model, final)
    return model, EveProcessor.from_pretrained(final)


def test_stages_2_and_3_train_everything_and_write_loadable_eve_directories(work, stage1, stage2, stage3):
    from eve_model.shards import iter_samples
    from eve_model.training.data import processor_inputs

    samples = list(iter_samples(work["ds"]))[:3]
    for run_dir, template in ((stage2, "plain"), (stage3, "vicuna_v1")):
        model, processor = _load_eve(run_dir / "final")
        batch = processor(processor_inputs(samples, template), template)
        with torch.no_grad():
            output = model(**batch)
        assert torch.isfinite(output.loss) and output.alignment_loss is not None
        assert set(read_jsonl(run_dir / "metrics.jsonl")[-1]["learning_rate"]) == {"pel", "aligning", "llm"}
    before = load_file(stage1 / "final" / "model.safetensors")
    after = load_file(stage2 / "final" / "model.safetensors")
    changed = [k for k in before if k.startswith("language_model.") and not torch.equal(before[k], after[k])]
    assert changed, "stage 2 must train the LLM"
    assert _final_metrics(stage3)["inputs"]["init_weights_sha256"] == _final_metrics(stage2)["weights_sha256"]
    assert _final_metrics(stage3)["stage"] == "3"  # StageId values are strings


def test_rerunning_a_completed_stage_is_a_no_op(work, stage3):
    before = (stage3 / "final" / "final_metrics.json").read_text()
    cfg_path = work["root"] / "stage3.json"
    result = subprocess.run(torchrun_command(cfg_path, 1), env=subprocess_env(work["home"]), cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "nothing to do" in result.stdout
    assert (stage3 / "final" / "final_metrics.json").read_text() == before


def test_checkpoints_follow_the_clock_and_loader_workers_train_the_stage(stage2):
    """checkpoint_interval_minutes: rank 0's clock, agreed by both ranks, saved after steps 1 and 2
    (the last step is the final model instead); every save's duration is recorded."""
    timings = [json.loads(line) for line in (stage2 / SAVE_TIMINGS_PATH).read_text().splitlines()]
    assert [t["step"] for t in timings] == [1, 2] and all(t["seconds"] > 0 for t in timings)
    metrics = [json.loads(line) for line in (stage2 / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(0 <= m["data_wait_share"] < 1 and m["mfu"] is None for m in metrics)  # no GPU peak on CPU
