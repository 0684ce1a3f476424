"""Node-side checks before any training compute: fail fast, with exit code 2 and a clear message.

peers.md P2 and P10: a multi-node launch that silently runs with the wrong world size, or a job
that trains on a dataset version other than the one pinned at trigger time, wastes a whole
allocation. Every submission backend exports the topology it asked for
(``EVE_EXPECTED_NODES``, ``EVE_EXPECTED_RANKS_PER_NODE``), so each rank can compare it with the
world it actually joined.

Use from the training entry point::

    from eve_model.preflight import PreflightError, run_preflight
    run_preflight(dataset_location=..., dataset_hash=..., init_checkpoint=...)   # raises PreflightError

or as a command (exit 0 ok, 2 failed)::

    python -m eve_model.preflight --dataset DIR --dataset-hash H --init-checkpoint DIR
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

PREFLIGHT_FAILED_EXIT_CODE = 2
EXPECTED_NODES_ENV = "EVE_EXPECTED_NODES"
EXPECTED_RANKS_PER_NODE_ENV = "EVE_EXPECTED_RANKS_PER_NODE"
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


def check_dataset(location: str | Path, expected_hash: str | None, check_shards: bool = True) -> int:
    """The dataset at ``location`` is the pinned version (manifest hash and, optionally, every shard)."""
    from eve_model.shards import DatasetIntegrityError, verify_dataset

    if not expected_hash:
        raise PreflightError(f"no dataset hash pinned for {location}: the platform must pin the version it trains on")
    try:
        manifest = verify_dataset(location, expected_hash=expected_hash, check_shards=check_shards)
    except DatasetIntegrityError as error:
        raise PreflightError(f"dataset {location} is not the pinned version {expected_hash[:12]}: {error}") from error
    except FileNotFoundError as error:
        raise PreflightError(f"dataset {location} not found: {error}") from error
    return manifest.num_items


def check_init_checkpoint(path: str | Path, load_tensors: bool = False) -> list[str]:
    """The init checkpoint exists and its weight files open without unpickling code.

    Reads safetensors headers (every tensor with ``load_tensors``); ``.bin/.pt`` go through
    ``torch.load(weights_only=True)``. Returns the weight files checked.
    """
    path = Path(path)
    if not path.exists():
        raise PreflightError(f"init checkpoint {path} does not exist")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in _WEIGHT_SUFFIXES)
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
                import torch

                torch.load(weight_file, map_location="cpu", weights_only=True)
        except Exception as error:  # any reader error means the file cannot be trusted
            raise PreflightError(f"init checkpoint file {weight_file} does not load: {error}") from error
    return [str(f) for f in files]


def run_preflight(
    dataset_location: str | Path | None = None,
    dataset_hash: str | None = None,
    init_checkpoint: str | Path | None = None,
    expected_nodes: int | None = None,
    expected_ranks_per_node: int | None = None,
    check_shards: bool = True,
) -> None:
    """All checks, cheapest first; raises ``PreflightError`` on the first failure."""
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
        return PREFLIGHT_FAILED_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
