"""Training entry point of one EVE stage: ``python -m eve_model.train <stage_config.json>``.

The same command runs everywhere::

    python -m eve_model.train stage1.json                          # one process, no launcher
    torchrun --nproc_per_node 2 -m eve_model.train stage1.json     # local, 2 ranks (gloo on CPU)
    srun --ntasks 16 python -m eve_model.train stage1.json         # SLURM (ranks from SLURM_*)

(``eve train`` and the platform's stage jobs start it through a submission backend,
``tasks.submit``.) Exit codes are ``eve_model.exit_codes.ExitCode``: COMPLETED (0) the stage is
complete (``<output_dir>/final`` holds the HF model); CONFIG_ERROR (2) the config or the preflight
checks refused to start, with one line saying why, before any compute; REQUEUE (75) a
SIGTERM/SIGUSR1 arrived, a checkpoint was flushed, run the same command again to resume ("requeue
me"); anything else is a failure.

Each rank runs the preflight checks (``eve_model.preflight.preflight_stage``) exactly once, before
torch.distributed and DeepSpeed are set up, and the trainer builds on what they found.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from eve_model.exit_codes import ExitCode


def job_command(config_path: str | Path, python_executable: str = sys.executable) -> list[str]:
    """The argv every rank of a stage job runs: this entry point on ``config_path``."""
    return [python_executable, "-m", "eve_model.train", str(config_path)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m eve_model.train <stage_config.json>", file=sys.stderr)
        return ExitCode.CONFIG_ERROR

    from pydantic import ValidationError

    from eve_model.preflight import PreflightError, preflight_allocation, preflight_stage
    from eve_model.training.config import StageConfig, StageConfigError
    from eve_model.training.engine import FINAL_DIR_NAME, StageTrainer, stage_is_complete
    from eve_model.training.runtime import (
        configure_accelerator_env,
        discover_distributed_env,
        init_process_group,
        shutdown_process_group,
    )

    try:
        config = StageConfig.read(argv[0])
    except (StageConfigError, ValidationError) as exc:
        print(f"[eve.train] invalid stage config {argv[0]}:\n{exc}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR

    env = discover_distributed_env()
    if stage_is_complete(config):
        if env.rank == 0:
            print(f"[eve.train] {config.output_dir}/{FINAL_DIR_NAME} is complete for this config; nothing to do")
        return ExitCode.COMPLETED
    # The checks run here, once per rank, before torch.distributed or DeepSpeed is set up: a bad
    # config fails in a second with one line, not after the process group formed.
    try:
        checked = preflight_stage(config)
    except PreflightError as exc:
        print(f"[eve.train] rank {env.rank}: cannot start: {exc}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR

    device_type = configure_accelerator_env()
    init_process_group(device_type, env.local_rank)
    try:
        preflight_allocation(config)  # collective: every rank gets the same answer
    except PreflightError as exc:
        if env.rank == 0:
            print(f"[eve.train] cannot start: {exc}", file=sys.stderr)
        shutdown_process_group(synchronise=False)
        return ExitCode.CONFIG_ERROR
    ended_together = False
    try:
        code = StageTrainer(config, env, device_type, checked).run()
        ended_together = True
        return code
    except StageConfigError as exc:  # found while building (parameter groups, DeepSpeed JSON, resume)
        print(f"[eve.train] rank {env.rank}: cannot start: {exc}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    finally:
        # After an error this rank alone left the step loop: a barrier would wait for ranks that
        # are in another collective (a hang until the scheduler kills the job), so only a rank
        # that ended with the others synchronises.
        shutdown_process_group(synchronise=ended_together)


if __name__ == "__main__":
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: with 2+ gloo ranks the process otherwise hangs in garbage collection
    # of DeepSpeed's shared-memory comm objects after the group is destroyed (seen with DeepSpeed 0.19
    # on CPU). Everything is written and closed by now.
    os._exit(exit_code)
