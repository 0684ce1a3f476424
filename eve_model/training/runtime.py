"""Process-level setup shared by every launcher: rank discovery, accelerator, caches, process group.

The entry point is the same under ``torchrun`` (RANK/WORLD_SIZE/LOCAL_RANK set), under ``srun``
(SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID mapped here) and in one process without a launcher
(RANK=0, WORLD_SIZE=1, a free loopback port). Everything here must run before ``import deepspeed``
because DeepSpeed picks its accelerator at import time.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def platform_home() -> Path:
    """The platform home (EVE_HOME); the same default as ``tasks.platform`` without importing it,
    because ``eve_model`` runs on cluster nodes and never imports the orchestration layer."""
    return Path(os.environ.get("EVE_HOME", REPO_ROOT / ".eve-home")).resolve()


@dataclass(frozen=True)
class DistributedEnv:
    rank: int
    local_rank: int
    world_size: int
    launcher: str
    """"torchrun", "slurm" or "none"."""


def free_loopback_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _first_slurm_host() -> str:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        return "127.0.0.1"
    try:
        hosts = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True, timeout=30
        ).stdout.split()
        return hosts[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return nodelist.split(",")[0]


def discover_distributed_env() -> DistributedEnv:
    """Fill in the torch.distributed env variables for whichever launcher started us."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        launcher = "torchrun"
    elif "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ:
        launcher = "slurm"
        os.environ["RANK"] = os.environ["SLURM_PROCID"]
        os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
        os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
        os.environ.setdefault("MASTER_ADDR", _first_slurm_host())
        # Same port on every task of a job, different for concurrent jobs on one node.
        os.environ.setdefault("MASTER_PORT", str(20000 + int(os.environ.get("SLURM_JOB_ID", "0")) % 20000))
    else:
        launcher = "none"
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_loopback_port()))
    os.environ.setdefault("LOCAL_RANK", "0")
    return DistributedEnv(
        rank=int(os.environ["RANK"]),
        local_rank=int(os.environ["LOCAL_RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        launcher=launcher,
    )


def configure_accelerator_env() -> str:
    """Pick cuda or cpu, set DS_ACCELERATOR and a persistent TORCH_EXTENSIONS_DIR; returns the device type."""
    import torch

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    os.environ.setdefault("DS_ACCELERATOR", device_type)
    # DeepSpeed JIT-compiles ops (the CPU shared-memory comm op takes ~40 s); build them once per home.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(platform_home() / "cache" / "torch_extensions"))
    if device_type == "cpu":
        # Two ranks with a thread pool each oversubscribe small machines; torchrun sets this, srun does not.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    return device_type


def init_process_group(device_type: str, local_rank: int) -> None:
    import deepspeed
    import torch

    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    else:
        # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce op on first use (48 s measured
        # on a fresh platform home: half of a cold demo's base-LLM stage). Only its inference all-reduce
        # uses that op; training collectives go through gloo either way. ``__compatible_ops__`` is
        # DeepSpeed's own per-process switchboard (deepspeed/ops/__init__.py keeps edits to it).
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if device_type == "cuda" else "gloo")


def shutdown_process_group(synchronise: bool = True) -> None:
    """Barrier, then destroy the group: ZeRO-3 runs crash at interpreter exit without it.

    ``synchronise=False`` (a rank leaving on an error): no barrier and no destroy, both of which
    wait for the other ranks; the process exits and the launcher stops the rest."""
    import torch.distributed as dist

    if synchronise and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


__all__ = [
    "DistributedEnv",
    "configure_accelerator_env",
    "discover_distributed_env",
    "init_process_group",
    "platform_home",
    "shutdown_process_group",
]
