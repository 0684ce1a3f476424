"""Issue 15, checkpoints: a resume verifies every step-checkpoint file against the manifest written
with it and unpickles DeepSpeed's files weights-only, so a payload planted in a stage folder is
refused and never runs (real 2-rank gloo DeepSpeed jobs, tiny preset)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from eve_model.exit_codes import ExitCode
from eve_model.training.checkpointing import MANIFEST_NAME, sha256_file
from eve_model.training.config import tiny_stage_config
from tests.eve_model.training_datasets import read_jsonl, run_stage, write_tiny_dataset

pytestmark = pytest.mark.slow

COMMON = dict(global_batch_size_samples=4, micro_batch_size_samples=1, max_sequence_length_tokens=64,
              wandb_mode="disabled", max_steps=4, checkpoint_interval_steps=2, zero_stage=2, keep_last_checkpoints=3)
STEP = "step-00000002"


class Payload:
    """What an attacker plants: unpickling it creates ``marker`` (any code could run instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One finished 2-rank ZeRO-2 run with a step checkpoint at step 2 (kept as the pristine copy)."""
    root = tmp_path_factory.mktemp("ckpt")
    home = root / "home"
    home.mkdir()
    manifest = write_tiny_dataset(root / "ds", num_samples=16, items_per_shard=8)
    config = tiny_stage_config("base-llm", str(root / "run"), str(root / "ds"), manifest.dataset_hash, **COMMON)
    result = run_stage(config, root / "run.json", home)
    assert result.returncode == 0, result.stderr[-4000:]
    return {"root": root, "home": home, "config": config, "run": root / "run"}


def resume_copy(trained: dict, name: str, tamper=None, nproc: int = 1):
    """A copy of the run without its final model (so the job resumes from step 2), tampered, then run."""
    run_dir = trained["root"] / name
    shutil.copytree(trained["run"], run_dir)
    shutil.rmtree(run_dir / "final")
    (run_dir / "metrics.jsonl").unlink()
    if tamper is not None:
        tamper(run_dir / "checkpoints")
    config = trained["config"].model_copy(update={"output_dir": str(run_dir)})
    return run_dir, run_stage(config, trained["root"] / f"{name}.json", trained["home"], nproc=nproc)


def test_every_file_of_a_step_checkpoint_is_in_its_manifest_with_its_hash(trained) -> None:
    step = trained["run"] / "checkpoints" / STEP
    manifest = json.loads((step / MANIFEST_NAME).read_text())
    on_disk = sorted(p.relative_to(step).as_posix() for p in step.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    assert sorted(manifest["files"]) == on_disk
    assert {"trainer_state.json", "rng_state_rank0.pt", "rng_state_rank1.pt", "mp_rank_00_model_states.pt"} <= set(on_disk)
    assert any("optim_states" in name for name in on_disk)  # both ZeRO-2 partitions
    for name, entry in manifest["files"].items():
        assert entry == {"sha256": sha256_file(step / name), "bytes": (step / name).stat().st_size}


def test_a_verified_checkpoint_resumes_with_weights_only_loading(trained) -> None:
    run_dir, result = resume_copy(trained, "resume-ok", nproc=2)
    assert result.returncode == ExitCode.COMPLETED, result.stderr[-4000:]
    assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")] == [3, 4]  # resumed, not restarted


def _plant(marker: Path, name: str = "mp_rank_00_model_states.pt", forge_manifest: bool = False):
    def tamper(checkpoints: Path) -> None:
        target = checkpoints / STEP / name
        torch.save({"module": Payload(marker)}, target)
        if forge_manifest:  # the attacker also rewrites the manifest: the hashes now match
            manifest_path = checkpoints / STEP / MANIFEST_NAME
            manifest = json.loads(manifest_path.read_text())
            manifest["files"][name] = {"sha256": sha256_file(target), "bytes": target.stat().st_size}
            manifest_path.write_text(json.dumps(manifest))
    return tamper


def test_a_planted_payload_is_refused_by_its_hash_and_nothing_runs(trained, tmp_path) -> None:
    marker = tmp_path / "pwned"
    torch.save(Payload(marker), tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)  # the payload is real: plain unpickling runs it
    assert marker.exists()
    marker.unlink()

    run_dir, result = resume_copy(trained, "planted", _plant(marker), nproc=2)
    assert result.returncode != 0  # torchrun reports a failed child as 1; each rank exited 2 (config error)
    for rank in (0, 1):  # both ranks refuse, in step: neither waits for the other in a collective
        assert f"[eve.train] rank {rank}: cannot start: refusing to load checkpoint" in result.stderr, result.stderr[-4000:]
    assert "mp_rank_00_model_states.pt: 1" in result.stderr and "the manifest says" in result.stderr
    assert "Nothing in it was unpickled" in result.stderr
    assert not marker.exists()
    assert not (run_dir / "final").exists() and not (run_dir / "metrics.jsonl").exists()  # nothing trained either

    def flip_one_byte(checkpoints: Path) -> None:  # same size, other content: only the hash tells
        target = checkpoints / STEP / "mp_rank_00_model_states.pt"
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))

    _, result = resume_copy(trained, "flipped", flip_one_byte)
    assert result.returncode == ExitCode.CONFIG_ERROR, result.stderr[-4000:]
    assert "mp_rank_00_model_states.pt: sha256" in result.stderr and "differs from the manifest" in result.stderr


def test_a_payload_with_a_forged_manifest_is_refused_by_weights_only_loading(trained, tmp_path) -> None:
    marker = tmp_path / "pwned"
    _, result = resume_copy(trained, "forged", _plant(marker, forge_manifest=True))
    assert result.returncode == ExitCode.CONFIG_ERROR, result.stderr[-4000:]
    assert "refusing to unpickle" in result.stderr and "mp_rank_00_model_states.pt" in result.stderr
    assert not marker.exists()


def test_an_extra_file_and_a_planted_newer_step_are_refused_or_discarded(trained, tmp_path) -> None:
    marker = tmp_path / "pwned"

    def extra_file(checkpoints: Path) -> None:
        torch.save(Payload(marker), checkpoints / STEP / "zero_pp_rank_2_mp_rank_00_optim_states.pt")

    _, result = resume_copy(trained, "extra", extra_file)
    assert result.returncode == ExitCode.CONFIG_ERROR and "not in the manifest" in result.stderr, result.stderr[-4000:]

    def newer_step(checkpoints: Path) -> None:
        planted = checkpoints / "step-00000003"
        shutil.copytree(checkpoints / STEP, planted)
        (planted / MANIFEST_NAME).unlink()  # an unverified directory: never picked, deleted at start
        torch.save({"module": Payload(marker)}, planted / "mp_rank_00_model_states.pt")
        (checkpoints / "latest").write_text("step-00000003")

    run_dir, result = resume_copy(trained, "newer", newer_step, nproc=2)
    assert result.returncode == ExitCode.COMPLETED, result.stderr[-4000:]
    assert [m["step"] for m in read_jsonl(run_dir / "metrics.jsonl")] == [3, 4]
    assert not (run_dir / "checkpoints" / "step-00000003").exists()
    assert not marker.exists()
