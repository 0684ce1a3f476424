"""Resumable step checkpoints (DeepSpeed) plus the trainer state this package owns.

Layout under ``<output_dir>/checkpoints``::

    latest                          DeepSpeed's pointer, written after every rank saved its shard
    step-00000010/                  DeepSpeed model/optimizer(/ZeRO) states
        trainer_state.json          completed steps, loader position, config hash (JSON, no pickle)
        rng_state_rank<R>.pt        per-rank RNG states (tensors only: loads with weights_only=True)

Our files are written before ``engine.save_checkpoint``, so ``latest`` never points at a step
directory without them. A kill -9 during a save leaves ``latest`` on the previous complete step;
the half-written directory is deleted at the next start (``discard_incomplete``).

DeepSpeed loads its own model/optimizer files with ``torch.load``; the files we control load with
``weights_only=True`` or are JSON.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from eve_model.training.data import LoaderPosition

_STEP_DIR = re.compile(r"^step-(\d{8})$")
TRAINER_STATE_NAME = "trainer_state.json"


def step_tag(step: int) -> str:
    return f"step-{step:08d}"


@dataclass(frozen=True)
class TrainerState:
    """What a resume needs besides the DeepSpeed states."""

    completed_steps: int
    loader_position: LoaderPosition
    config_hash: str
    world_size: int

    def to_json(self) -> dict[str, Any]:
        return {
            "completed_steps": self.completed_steps,
            "loader_position": self.loader_position.to_json(),
            "config_hash": self.config_hash,
            "world_size": self.world_size,
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "TrainerState":
        return cls(
            completed_steps=int(payload["completed_steps"]),
            loader_position=LoaderPosition.from_json(payload["loader_position"]),
            config_hash=str(payload["config_hash"]),
            world_size=int(payload["world_size"]),
        )


class CheckpointManager:
    """Saves and finds step checkpoints of one run; every method is called on every rank."""

    def __init__(self, output_dir: str | Path, rank: int, keep_last: int) -> None:
        self.root = Path(output_dir) / "checkpoints"
        self.rank = rank
        self.keep_last = keep_last

    def latest_tag(self) -> str | None:
        pointer = self.root / "latest"
        if not pointer.exists():
            return None
        tag = pointer.read_text().strip()
        return tag if (self.root / tag / TRAINER_STATE_NAME).exists() else None

    def discard_incomplete(self) -> None:
        """Delete step directories newer than ``latest`` (left by a save that was killed); rank 0 only."""
        if self.rank != 0 or not self.root.exists():
            return
        latest = self.latest_tag()
        latest_step = int(latest.split("-")[1]) if latest else -1
        for path in self.root.iterdir():
            match = _STEP_DIR.match(path.name)
            if match and int(match.group(1)) > latest_step:
                shutil.rmtree(path, ignore_errors=True)

    def save(self, engine, state: TrainerState) -> Path:
        import torch.distributed as dist

        tag = step_tag(state.completed_steps)
        directory = self.root / tag
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(_rng_state(), directory / f"rng_state_rank{self.rank}.pt")
        if self.rank == 0:
            tmp = directory / f".{TRAINER_STATE_NAME}.tmp"
            tmp.write_text(json.dumps(state.to_json(), indent=2))
            tmp.replace(directory / TRAINER_STATE_NAME)
        if dist.is_initialized():
            dist.barrier()
        # client_state stays empty: everything we need is in the JSON above (no pickled objects).
        engine.save_checkpoint(str(self.root), tag=tag, client_state={}, save_latest=True)
        self._prune()
        return directory

    def load(self, engine, tag: str) -> TrainerState:
        """Restore engine (model, optimizer, scheduler) and RNG states; return the trainer state."""
        directory = self.root / tag
        state = TrainerState.from_json(json.loads((directory / TRAINER_STATE_NAME).read_text()))
        load_path, _ = engine.load_checkpoint(
            str(self.root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {directory}")
        rng_file = directory / f"rng_state_rank{self.rank}.pt"
        # A resume on a different world size has no RNG file for new ranks: they keep the seeded state.
        if rng_file.exists():
            _set_rng_state(torch.load(rng_file, weights_only=True))
        return state

    def _prune(self) -> None:
        if self.rank != 0:
            return
        steps = sorted(p for p in self.root.iterdir() if _STEP_DIR.match(p.name))
        for path in steps[: -self.keep_last]:
            shutil.rmtree(path, ignore_errors=True)


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["torch_cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if "torch_cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["torch_cuda"])


__all__ = ["CheckpointManager", "TRAINER_STATE_NAME", "TrainerState", "step_tag"]
