"""The exact job definitions of a retrain, written out for a cluster admin to read before anything
is submitted (``eve retrain --dry-run --render DIR``).

Per stage, under ``DIR/stage-<id>/``: the stage config the ranks read, the resolved DeepSpeed JSON
(batch sizes filled in for the job's world size), and the backend's job definition: the sbatch
script (SLURM), the manifests (Kubernetes, validated offline) or the supervisor script (local).
``summary.txt`` states the arithmetic an admin checks first (world size, batch split, flush timing).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from eve_model.training.config import StageConfig
from tasks.submit.spec import JobSpec


def resolved_deepspeed_config(config: StageConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON the job will build for ``config`` on ``world_size`` ranks."""
    from eve_model.training.engine import resolve_deepspeed_config
    from eve_model.training.stage_protocol import eve_config_for_preset

    hidden = eve_config_for_preset(config.model_preset, config.model_overrides).text_config.hidden_size
    return resolve_deepspeed_config(config, world_size, config.gradient_accumulation_steps(world_size), hidden)


def job_definition(spec: JobSpec, backend: str, backend_options: dict[str, Any]) -> tuple[str, str]:
    """(file name, text) of the backend's definition of ``spec``."""
    if backend == "slurm":
        from tasks.submit.slurm import render_sbatch_script

        return "job.sbatch", render_sbatch_script(spec)
    if backend in ("k8s", "kubernetes"):
        from tasks.submit.k8s import KubernetesOptions, render_manifests

        manifests = render_manifests(spec, KubernetesOptions(**backend_options), attempt_suffix="a0001")
        return "manifests.yaml", yaml.safe_dump_all(manifests, sort_keys=False, width=120)
    from tasks.submit.local import render_local_script

    return "job.sh", render_local_script(spec, "local-dry-run", spec.rendezvous_port or 29500)


def _summary(config: StageConfig, spec: JobSpec, deepspeed: dict[str, Any]) -> str:
    lines = [
        f"stage {config.stage}: {config.run_name} ({config.model_preset}, ZeRO-{config.zero_stage}, {config.precision})",
        f"world size {spec.world_size} = {spec.nodes} node(s) x {spec.ranks_per_node} rank(s)",
        f"global batch {config.global_batch_size_samples} = micro-batch {config.micro_batch_size_samples} x "
        f"accumulation {deepspeed['gradient_accumulation_steps']} x world size {spec.world_size}",
        f"runtime: {spec.container_image or spec.runtime_environment or spec.python_executable}",
        f"flush: step {spec.max_step_seconds} s + checkpoint save {spec.checkpoint_save_seconds} s + margin = "
        f"{spec.flush_seconds} s = torchrun --shutdown-timeout",
        f"pre-timeout signal {spec.signal_lead_seconds} s before the limit "
        f"({spec.time_limit_minutes} min)" if spec.time_limit_minutes else "no time limit (no pre-timeout signal)",
        f"Kubernetes grace period {spec.termination_grace_seconds} s",
        f"checkpoints every {config.checkpoint_interval_steps} steps"
        + (f" or {config.checkpoint_interval_minutes:g} min of work" if config.checkpoint_interval_minutes else ""),
        "paths every node must see: " + ", ".join(spec.shared_paths),
    ]
    return "\n".join(lines) + "\n"


def write_job_definitions(
    planned_jobs: list[tuple[StageConfig, JobSpec]], backend: str, backend_options: dict[str, Any], out_dir: Path
) -> list[Path]:
    """Write every stage's definitions under ``out_dir``; returns the files written."""
    written: list[Path] = []
    for config, spec in planned_jobs:
        stage_dir = Path(out_dir) / f"stage-{config.stage}"
        stage_dir.mkdir(parents=True, exist_ok=True)
        deepspeed = resolved_deepspeed_config(config, spec.world_size)
        name, text = job_definition(spec, backend, backend_options)
        files = {
            "stage_config.json": json.dumps(config.to_json_dict(), indent=2, sort_keys=True) + "\n",
            "deepspeed_config.json": json.dumps(deepspeed, indent=2) + "\n",
            "job_spec.json": spec.model_dump_json(indent=2) + "\n",
            name: text,
            "summary.txt": _summary(config, spec, deepspeed),
        }
        for file_name, content in files.items():
            path = stage_dir / file_name
            path.write_text(content)
            written.append(path)
    return written


__all__ = ["job_definition", "resolved_deepspeed_config", "write_job_definitions"]
