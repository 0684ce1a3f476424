"""Resumable step checkpoints (DeepSpeed) plus the trainer state this package owns, verified on load.

Layout under ``<output_dir>/checkpoints``::

    latest                          DeepSpeed's pointer (kept for DeepSpeed's own tools)
    step-00000010/                  DeepSpeed model/optimizer(/ZeRO) states
        trainer_state.json          completed steps, loader position, config hash (JSON, no pickle)
        rng_state_rank<R>.pt        per-rank RNG states (tensors only)
        checkpoint_manifest.json    sha256 and size of every other file of the step; written last

A step checkpoint exists only once its manifest does: the manifest is written after every rank's
DeepSpeed save returned, so a kill -9 during a save leaves a step directory without one, which
``latest_tag`` never picks and ``discard_incomplete`` deletes at the next start.

Loading never trusts the files. DeepSpeed's model and optimizer files are pickles, and unpickling
a planted file runs its code. So ``load``, before anything is deserialised:

1. checks that the step directory holds exactly the files of its manifest, with their sizes;
2. hashes them (split across the ranks) and refuses the whole checkpoint if one sha256 differs:
   every rank raises ``CheckpointIntegrityError`` (a ``StageConfigError``: the job exits 2, rerunning
   fails the same way until a person looks), and nothing was unpickled;
3. then lets DeepSpeed load with ``torch.load`` forced to ``weights_only=True`` for the duration,
   with only the DeepSpeed classes its checkpoints hold allowed (``safe_deepspeed_globals``), and only
   for files listed in the manifest. So even a planted file whose hash was written into a forged
   manifest cannot run code: its unpickling stops at the first global that is not a tensor type.

What this does not cover is stated in docs/security.md: someone who can write the stage folder can
replace a checkpoint with other *weights* and a matching manifest (wrong numbers, no code).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from eve_model.training.config import StageConfigError
from eve_model.training.data import LoaderPosition

_STEP_DIR = re.compile(r"^step-(\d{8})$")
TRAINER_STATE_NAME = "trainer_state.json"
MANIFEST_NAME = "checkpoint_manifest.json"
MANIFEST_FORMAT = "eve-checkpoint-manifest/1"
_HASH_CHUNK_BYTES = 8 * 1024 * 1024


class CheckpointIntegrityError(StageConfigError):
    """A step checkpoint whose files do not match its manifest, or that would need unsafe unpickling;
    refused before anything in it was deserialised."""


def safe_deepspeed_globals() -> list[Any]:
    """The non-tensor classes DeepSpeed 0.19 pickles into its checkpoints (ZeRO 0-3, fp32/bf16/fp16),
    found by listing the globals of real checkpoint files. Each is a plain value holder; anything
    else a file asks for is refused. A new DeepSpeed that pickles another class fails the resume
    with the class named, to be reviewed and added here."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


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


# ------------------------------------------------------------------------------------------ manifest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_files(directory: Path) -> list[str]:
    """Relative paths of the files a step checkpoint consists of (everything but the manifest), sorted.
    Symlinks are listed too, so that one planted in the directory is caught rather than followed."""
    files = []
    for path in directory.rglob("*"):
        if path.is_symlink() or path.is_file():
            relative = path.relative_to(directory).as_posix()
            if relative != MANIFEST_NAME and not relative.endswith(".tmp"):
                files.append(relative)
    return sorted(files)


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(value: Any) -> list[Any]:
    """``value`` of every rank (the platform's own process group: no untrusted data)."""
    import torch.distributed as dist

    rank, world_size = _world()
    if world_size == 1:
        return [value]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, value)
    return gathered


def _hash_my_share(directory: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """sha256 and size of this rank's share of ``names`` (every world_size-th file): the ranks hash a
    large checkpoint in parallel instead of one rank reading all of it."""
    rank, world_size = _world()
    share = {}
    for index, name in enumerate(names):
        if index % world_size == rank:
            path = directory / name
            if path.is_symlink() or not path.is_file():
                share[name] = {"sha256": None, "bytes": None, "problem": "is a symlink or not a regular file"}
            else:
                share[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return share


def write_manifest(directory: Path) -> dict[str, Any]:
    """Hash every file of a finished step checkpoint (all ranks take part) and write the manifest
    atomically on rank 0; returns it. Called on every rank, after every rank's save returned."""
    names = checkpoint_files(directory)
    files: dict[str, dict[str, Any]] = {}
    for share in _gather(_hash_my_share(directory, names)):
        files.update(share)
    manifest = {"format": MANIFEST_FORMAT, "tag": directory.name, "files": dict(sorted(files.items()))}
    if _world()[0] == 0:
        tmp = directory / f".{MANIFEST_NAME}.tmp"
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        tmp.replace(directory / MANIFEST_NAME)
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointIntegrityError(f"{directory}: no {MANIFEST_NAME}; an unverified checkpoint is never loaded") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointIntegrityError(f"{path} is not a checkpoint manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or not isinstance(manifest.get("files"), dict):
        raise CheckpointIntegrityError(f"{path} is not a {MANIFEST_FORMAT} manifest")
    return manifest


def verify_checkpoint(directory: Path) -> dict[str, Any]:
    """Refuse (``CheckpointIntegrityError``, on every rank) a step directory whose files differ from
    its manifest: a file added, missing, resized, replaced by a symlink, or with another sha256.
    Reads but never deserialises; returns the manifest."""
    manifest = read_manifest(directory)
    listed = manifest["files"]
    problems = []
    on_disk = checkpoint_files(directory)
    problems += [f"{name}: not in the manifest (planted?)" for name in on_disk if name not in listed]
    problems += [f"{name}: listed in the manifest but missing" for name in listed if name not in on_disk]
    for name in on_disk:
        path = directory / name
        if name in listed and not path.is_symlink() and path.stat().st_size != listed[name].get("bytes"):
            problems.append(f"{name}: {path.stat().st_size} bytes, the manifest says {listed[name].get('bytes')}")
    if not problems:
        for share in _gather(_hash_my_share(directory, sorted(listed))):
            for name, entry in share.items():
                if entry.get("problem"):
                    problems.append(f"{name}: {entry['problem']}")
                elif entry["sha256"] != listed[name].get("sha256"):
                    problems.append(f"{name}: sha256 {entry['sha256'][:16]}... differs from the manifest's "
                                    f"{str(listed[name].get('sha256'))[:16]}...")
    else:
        _gather([])  # keep the ranks in step: every rank reaches the same collectives
    if problems:
        raise CheckpointIntegrityError(
            f"refusing to load checkpoint {directory}: {'; '.join(sorted(problems)[:8])}"
            f"{f' (+{len(problems) - 8} more)' if len(problems) > 8 else ''}. Nothing in it was unpickled. "
            "Move the directory aside to resume from an earlier step, or delete the stage folder to start over."
        )
    return manifest


@contextlib.contextmanager
def weights_only_loading(directory: Path, manifest: dict[str, Any]) -> Iterator[None]:
    """For the duration, every ``torch.load`` in this process (DeepSpeed's included) runs with
    ``weights_only=True`` and the DeepSpeed allow-list, and only on files the manifest lists."""
    original: Callable[..., Any] = torch.load
    allowed = safe_deepspeed_globals()
    listed = {(directory / name).resolve() for name in manifest["files"]}

    def guarded_load(f, map_location=None, *args: Any, **kwargs: Any) -> Any:
        if isinstance(f, (str, os.PathLike)) and Path(f).resolve() not in listed:
            raise CheckpointIntegrityError(f"refusing to load {f}: not a file of the verified checkpoint {directory}")
        kwargs["weights_only"] = True
        try:
            with torch.serialization.safe_globals(allowed):
                return original(f, map_location, *args, **kwargs)
        except Exception as exc:
            if "weights_only" in str(exc) or "Unsupported global" in str(exc) or "WeightsUnpickler" in str(exc):
                detail = next((line.strip() for line in str(exc).splitlines() if "Unsupported" in line or "Unpickler" in line),
                              str(exc).splitlines()[0])
                raise CheckpointIntegrityError(f"refusing to unpickle {f}: it needs more than tensors ({detail})") from None
            raise

    torch.load = guarded_load
    try:
        yield
    finally:
        torch.load = original


# ------------------------------------------------------------------------------------------ manager


class CheckpointManager:
    """Saves and finds step checkpoints of one run; every method is called on every rank."""

    def __init__(self, output_dir: str | Path, rank: int, keep_last: int) -> None:
        self.root = Path(output_dir) / "checkpoints"
        self.rank = rank
        self.keep_last = keep_last

    def _steps(self) -> list[tuple[int, Path]]:
        if not self.root.exists():
            return []
        return sorted((int(match.group(1)), path) for path in self.root.iterdir()
                      if (match := _STEP_DIR.match(path.name)) and path.is_dir() and not path.is_symlink())

    def latest_tag(self) -> str | None:
        """The newest step whose manifest exists (a complete save); DeepSpeed's ``latest`` is not trusted."""
        complete = [path.name for _, path in self._steps() if (path / MANIFEST_NAME).is_file()]
        return complete[-1] if complete else None

    def discard_incomplete(self) -> None:
        """Delete step directories newer than the newest complete one (left by a save that was killed,
        or planted); rank 0 only."""
        if self.rank != 0:
            return
        latest = self.latest_tag()
        latest_step = int(latest.split("-")[1]) if latest else -1
        for step, path in self._steps():
            if step > latest_step:
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
        if dist.is_initialized():
            dist.barrier()  # every rank's files are complete before they are hashed
        write_manifest(directory)
        if dist.is_initialized():
            dist.barrier()
        self._prune()
        return directory

    def load(self, engine, tag: str) -> TrainerState:
        """Verify the step checkpoint against its manifest, then restore engine (model, optimizer,
        scheduler) and RNG states with weights-only loading; return the trainer state."""
        directory = self.root / tag
        manifest = verify_checkpoint(directory)
        state = TrainerState.from_json(json.loads((directory / TRAINER_STATE_NAME).read_text()))
        with weights_only_loading(directory, manifest):
            load_path, _ = engine.load_checkpoint(
                str(self.root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
            )
            if load_path is None:
                raise RuntimeError(f"DeepSpeed could not load checkpoint {directory}")
            rng_file = directory / f"rng_state_rank{self.rank}.pt"
            # A resume on a different world size has no RNG file for new ranks: they keep the seeded state.
            if rng_file.exists():
                _set_rng_state(torch.load(rng_file))
        return state

    def _prune(self) -> None:
        if self.rank != 0:
            return
        steps = [path for _, path in self._steps()]
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


__all__ = [
    "CheckpointIntegrityError",
    "CheckpointManager",
    "MANIFEST_NAME",
    "TRAINER_STATE_NAME",
    "TrainerState",
    "read_manifest",
    "safe_deepspeed_globals",
    "sha256_file",
    "step_tag",
    "verify_checkpoint",
    "weights_only_loading",
    "write_manifest",
]
