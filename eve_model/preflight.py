"""Job-side checks before any training compute: fail fast, with ``ExitCode.CONFIG_ERROR`` and one line.

Why: a multi-node launch that silently runs with the wrong world size, or a job
that trains on a dataset version other than the one pinned at trigger time, wastes a whole
allocation. Every submission backend exports the topology it asked for
(``EVE_EXPECTED_NODES``, ``EVE_EXPECTED_RANKS_PER_NODE``), so each rank can compare it with the
world it actually joined.

A training job runs ``preflight_stage`` exactly once per rank, from the entry point
(``eve_model/train.py``) before torch.distributed and DeepSpeed are set up; the trainer takes what
it found (dataset manifest, total steps, gradient accumulation) from its result::

    from eve_model.preflight import PreflightError, preflight_stage
    checked = preflight_stage(config)      # raises PreflightError with the reason

The single checks are usable on their own, and as a command (exit 0 ok, ``ExitCode.CONFIG_ERROR``
failed)::

    python -m eve_model.preflight --dataset DIR --dataset-hash H --init-checkpoint DIR
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from eve_model.exit_codes import ExitCode

if TYPE_CHECKING:
    from eve_model.shards import DatasetManifest
    from eve_model.training.config import StageConfig

EXPECTED_NODES_ENV = "EVE_EXPECTED_NODES"
EXPECTED_RANKS_PER_NODE_ENV = "EVE_EXPECTED_RANKS_PER_NODE"
EXPECTED_GPUS_PER_NODE_ENV = "EVE_EXPECTED_GPUS_PER_NODE"
SHARED_MARKER_DIR = ".preflight"
"""Under the output dir: rank 0's marker that every rank must read back (``check_shared_directory``)."""
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class PreflightError(RuntimeError):
    """The job cannot start as configured; the message says what is wrong and what to fix."""


def _int_env(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError as error:
        raise PreflightError(f"{name}={value!r} is not an integer") from error


def check_world_size(
    expected_nodes: int | None = None,
    expected_ranks_per_node: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """WORLD_SIZE must equal nodes x ranks per node (GPUs per node, or tasks per node on CPU).

    Expectations default to the launcher's ``EVE_EXPECTED_*`` variables; returns the world size.
    """
    environ = os.environ if environ is None else environ
    expected_nodes = expected_nodes if expected_nodes is not None else _int_env(environ, EXPECTED_NODES_ENV)
    expected_ranks_per_node = (
        expected_ranks_per_node
        if expected_ranks_per_node is not None
        else _int_env(environ, EXPECTED_RANKS_PER_NODE_ENV)
    )
    world_size = _int_env(environ, "WORLD_SIZE") or 1
    if expected_nodes is None or expected_ranks_per_node is None:
        return world_size
    expected = expected_nodes * expected_ranks_per_node
    if world_size != expected:
        local_world_size = environ.get("LOCAL_WORLD_SIZE", "?")
        raise PreflightError(
            f"world size {world_size} != {expected_nodes} nodes x {expected_ranks_per_node} ranks per node "
            f"= {expected} (this node runs {local_world_size} ranks): the launch lost or duplicated nodes; "
            "check the rendezvous and the scheduler's allocation"
        )
    return world_size


def check_dataset(
    location: str | Path,
    expected_hash: str | None,
    check_shards: bool = True,
    allow_unpinned: bool = False,
) -> DatasetManifest:
    """The dataset at ``location`` is the pinned version (manifest hash and, optionally, every shard).

    Returns its manifest. ``allow_unpinned`` accepts ``expected_hash=None`` (exploratory stage
    configs; the platform always pins the hash) and then only reads the manifest.
    """
    from eve_model.shards import DatasetIntegrityError, verify_dataset

    if not expected_hash and not allow_unpinned:
        raise PreflightError(f"no dataset hash pinned for {location}: the platform must pin the version it trains on")
    try:
        return verify_dataset(location, expected_hash=expected_hash or None, check_shards=check_shards)
    except DatasetIntegrityError as error:
        if expected_hash:
            raise PreflightError(f"dataset {location} is not the pinned version {expected_hash[:12]}: {error}") from error
        raise PreflightError(f"dataset {location} cannot be read: {error}") from error
    except FileNotFoundError as error:
        raise PreflightError(f"dataset {location} not found: {error}") from error


def _weight_files(path: Path) -> list[Path]:
    """The files ``from_pretrained`` would load: a single weight file, or the top-level weight
    files among the model files of an HF directory (``eve_model.identity.model_files``)."""
    if path.is_file():
        return [path]
    from eve_model.identity import model_files

    if not (path / "config.json").is_file():
        raise PreflightError(f"init checkpoint {path} is not an HF model directory (no config.json)")
    try:
        files = model_files(path)
    except FileNotFoundError as error:
        raise PreflightError(f"init checkpoint {path} holds no weight files: {error}") from error
    return [f for f in files if f.suffix in _WEIGHT_SUFFIXES]


def _load_weights_only(weight_file: Path) -> None:
    import torch

    try:
        # Memory-mapped: every rank of a node checks the same files without each reading them into RAM.
        torch.load(weight_file, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise
        torch.load(weight_file, map_location="cpu", weights_only=True)  # legacy (non-zip) format


def check_init_checkpoint(path: str | Path, load_tensors: bool = False) -> list[str]:
    """The init checkpoint exists and its weight files open without unpickling code.

    ``path`` is an HF model directory (``config.json`` and weight files) or a single weight file.
    Reads safetensors headers (every tensor with ``load_tensors``); ``.bin/.pt`` go through
    ``torch.load(weights_only=True)``. Returns the weight files checked.
    """
    path = Path(path)
    if not path.exists():
        raise PreflightError(f"init checkpoint {path} does not exist")
    files = _weight_files(path)
    if not files:
        raise PreflightError(f"init checkpoint {path} holds no weight files ({', '.join(_WEIGHT_SUFFIXES)})")
    for weight_file in files:
        try:
            if weight_file.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(weight_file), framework="pt") as reader:
                    keys = list(reader.keys())
                    if load_tensors:
                        for key in keys:
                            reader.get_tensor(key)
            else:
                _load_weights_only(weight_file)
        except Exception as error:  # any reader error means the file cannot be trusted
            raise PreflightError(f"init checkpoint file {weight_file} does not load: {error}") from error
    return [str(f) for f in files]


def node_name(environ: Mapping[str, str] | None = None) -> str:
    """The node a rank runs on, as the scheduler names it (SLURM's node name, else the host name)."""
    environ = os.environ if environ is None else environ
    return environ.get("SLURMD_NODENAME") or socket.gethostname()


def check_accelerator(environ: Mapping[str, str] | None = None) -> None:
    """When the job asked for GPUs (``EVE_EXPECTED_GPUS_PER_NODE`` > 0), this rank must see CUDA
    and a GPU for every rank of its node: a CPU-only torch build or an empty ``CUDA_VISIBLE_DEVICES``
    would otherwise fall back to CPU and gloo without a word."""
    environ = os.environ if environ is None else environ
    expected = _int_env(environ, EXPECTED_GPUS_PER_NODE_ENV) or 0
    if expected <= 0:
        return
    import torch

    where = f"node {node_name(environ)}"
    if not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
        raise PreflightError(
            f"the job asked for {expected} GPU(s) per node but CUDA is not available on {where} ({build}, "
            f"CUDA_VISIBLE_DEVICES={environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}): check the job's container "
            "or environment and the scheduler's GPU allocation"
        )
    local_ranks = _int_env(environ, "LOCAL_WORLD_SIZE") or 1
    visible = torch.cuda.device_count()
    if visible < local_ranks:
        raise PreflightError(f"{where} runs {local_ranks} ranks but sees {visible} GPU(s)")


def check_teacher(config: StageConfig) -> str | None:
    """The frozen teacher the stage builds is one the nodes can load offline: a CLIP teacher must
    be a local HF directory (a hub id such as ``openai/clip-vit-large-patch14-336`` is refused by
    the offline loader, after the whole allocation started). Returns the teacher path checked."""
    import json

    from eve_model.training.config import StageId

    if config.stage == StageId.BASE_LLM:
        return None
    if config.stage == StageId.PREALIGN:
        from eve_model.training.stage_protocol import eve_config_for_preset

        eve_config = eve_config_for_preset(config.model_preset, config.model_overrides)
        kind, path = eve_config.teacher_kind, eve_config.teacher_path
    else:
        saved = Path(str(config.init_checkpoint)) / "config.json"
        try:
            values = json.loads(saved.read_text())
        except (OSError, ValueError) as error:
            raise PreflightError(f"cannot read the init checkpoint's model config {saved}: {error}") from error
        kind, path = values.get("teacher_kind"), values.get("teacher_path")
    if kind != "clip":
        return None
    if not path or not (Path(path) / "config.json").is_file():
        raise PreflightError(
            f"the CLIP teacher {path!r} is not a local model directory on node {node_name()}: jobs load models "
            "offline; set model_overrides.teacher_path (stage 1) to a directory on shared storage"
        )
    return str(path)


def check_shared_directory(directory: str | Path) -> None:
    """Every rank sees the same ``directory`` (a collective: call it on every rank after the process
    group formed). Rank 0 writes a marker with a fresh token; every rank reads it back; a rank that
    does not find it runs on a node where the path is another (node-local) filesystem."""
    import secrets

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    marker_dir = Path(directory) / SHARED_MARKER_DIR
    names = [None]
    if dist.get_rank() == 0:
        marker_dir.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(16)
        marker = marker_dir / f"{os.environ.get('EVE_JOB_ID', 'job')}-{token}"
        marker.write_text(f"{token} {node_name()}\n")
        names = [(marker.name, token)]
    dist.broadcast_object_list(names, src=0)
    name, token = names[0]
    try:
        seen = (marker_dir / name).read_text().split()[0] == token
    except OSError:
        seen = False
    results: list = [None] * dist.get_world_size()
    dist.all_gather_object(results, (dist.get_rank(), node_name(), seen))
    if dist.get_rank() == 0:
        (marker_dir / name).unlink(missing_ok=True)
    blind = [(rank, node) for rank, node, ok in results if not ok]
    if blind:
        nodes = sorted({node for _, node in blind})
        raise PreflightError(
            f"rank(s) {[rank for rank, _ in blind]} on node(s) {', '.join(nodes)} do not see the output directory "
            f"{directory} that rank 0 (node {results[0][1]}) writes: every node must mount the same shared "
            "filesystem at that path"
        )


def preflight_allocation(config: StageConfig) -> None:
    """The checks that need the whole allocation (after the process group formed): every node
    shares the output directory. Raises the same ``PreflightError`` on every rank."""
    check_shared_directory(config.output_dir)


@dataclass(frozen=True)
class StagePreflight:
    """What the checks of one stage job found; the trainer builds on it instead of checking again."""

    world_size: int
    manifest: DatasetManifest
    """The dataset's manifest (its hash checked against the pinned one)."""
    total_steps: int
    """Optimizer steps of the stage on this dataset."""
    gradient_accumulation_steps: int
    """Micro-batches per rank per step at this world size."""
    init_checkpoint_files: tuple[str, ...] = ()
    """Weight files of the init checkpoint that were checked."""


def preflight_stage(config: StageConfig, environ: Mapping[str, str] | None = None) -> StagePreflight:
    """Every check a stage job needs before it builds a model, cheapest first; raises ``PreflightError``.

    1. the world the rank joined is the topology the backend asked for (``check_world_size``);
    2. the global batch splits into micro-batches over that world;
    3. CUDA is there when the job asked for GPUs (``check_accelerator``);
    4. the init checkpoint (stage 1: the base LLM) is an HF model directory whose weights load
       without unpickling code (safetensors headers; ``.bin`` weights-only, memory-mapped), and a
       CLIP teacher is a local directory (``check_teacher``);
    5. the dataset manifest is the pinned version (its hash; each sample's image is checked
       against its ``image_sha256`` when a rank reads it, so no rank reads the whole dataset);
    6. the dataset holds at least one global batch.

    ``preflight_allocation`` adds the collective check after the process group formed (every
    node sees the shared output directory).
    """
    from eve_model.training.config import StageConfigError

    world_size = check_world_size(environ=environ)
    try:
        accumulation = config.gradient_accumulation_steps(world_size)
    except StageConfigError as error:
        raise PreflightError(str(error)) from error
    check_accelerator(environ)
    init_files = check_init_checkpoint(config.init_checkpoint) if config.init_checkpoint is not None else []
    check_teacher(config)
    manifest = check_dataset(config.dataset_location, config.dataset_hash, check_shards=False, allow_unpinned=True)
    try:
        total_steps = config.total_steps(manifest.num_items)
    except StageConfigError as error:
        raise PreflightError(str(error)) from error
    return StagePreflight(
        world_size=world_size,
        manifest=manifest,
        total_steps=total_steps,
        gradient_accumulation_steps=accumulation,
        init_checkpoint_files=tuple(init_files),
    )


def run_preflight(
    dataset_location: str | Path | None = None,
    dataset_hash: str | None = None,
    init_checkpoint: str | Path | None = None,
    expected_nodes: int | None = None,
    expected_ranks_per_node: int | None = None,
    check_shards: bool = True,
) -> None:
    """The single checks, cheapest first, for jobs without a stage config; raises ``PreflightError``."""
    check_world_size(expected_nodes, expected_ranks_per_node)
    if dataset_location is not None:
        check_dataset(dataset_location, dataset_hash, check_shards=check_shards)
    if init_checkpoint is not None:
        check_init_checkpoint(init_checkpoint)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eve_model.preflight", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="dataset version directory or s3:// URL")
    parser.add_argument("--dataset-hash", help="pinned dataset_hash of its manifest")
    parser.add_argument("--init-checkpoint", help="checkpoint directory or file the stage starts from")
    parser.add_argument("--expected-nodes", type=int)
    parser.add_argument("--expected-ranks-per-node", type=int)
    args = parser.parse_args(argv)
    try:
        run_preflight(
            dataset_location=args.dataset,
            dataset_hash=args.dataset_hash,
            init_checkpoint=args.init_checkpoint,
            expected_nodes=args.expected_nodes,
            expected_ranks_per_node=args.expected_ranks_per_node,
        )
    except PreflightError as error:
        print(f"[eve.preflight] rank {os.environ.get('RANK', '0')}: cannot start: {error}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    return ExitCode.COMPLETED


if __name__ == "__main__":
    sys.exit(main())
