"""Training entry point of one EVE stage: ``python -m eve_model.train <stage_config.json>``.

The same command runs everywhere::

    python -m eve_model.train stage1.json                          # one process, no launcher
    torchrun --nproc_per_node 2 -m eve_model.train stage1.json     # local, 2 ranks (gloo on CPU)
    srun --ntasks 16 python -m eve_model.train stage1.json         # SLURM (ranks from SLURM_*)

Exit codes: 0 the stage is complete (``<output_dir>/final`` holds the HF model); 2 the config
cannot run (reported before any compute); 75 a SIGTERM/SIGUSR1 arrived, a checkpoint was flushed,
run the same command again to resume ("requeue me"); anything else is a failure.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m eve_model.train <stage_config.json>", file=sys.stderr)
        return 2

    from pydantic import ValidationError

    from eve_model.training.config import StageConfig, StageConfigError
    from eve_model.training.signals import CONFIG_ERROR_EXIT_CODE

    try:
        config = StageConfig.read(argv[0])
    except (StageConfigError, ValidationError) as exc:
        print(f"[eve.train] invalid stage config {argv[0]}:\n{exc}", file=sys.stderr)
        return CONFIG_ERROR_EXIT_CODE

    from eve_model.training.runtime import (
        configure_accelerator_env,
        discover_distributed_env,
        init_process_group,
        shutdown_process_group,
    )

    env = discover_distributed_env()
    from eve_model.training.engine import StageTrainer, preflight

    # Cheap checks first (no torch import yet), so a bad config fails in a second, not after DeepSpeed loads.
    try:
        preflight(config, env.world_size)
    except StageConfigError as exc:
        print(f"[eve.train] rank {env.rank}: cannot start: {exc}", file=sys.stderr)
        return CONFIG_ERROR_EXIT_CODE
    device_type = configure_accelerator_env()

    init_process_group(device_type, env.local_rank)
    try:
        return StageTrainer(config, env, device_type).run()
    except StageConfigError as exc:
        print(f"[eve.train] rank {env.rank}: cannot start: {exc}", file=sys.stderr)
        return CONFIG_ERROR_EXIT_CODE
    finally:
        shutdown_process_group()


if __name__ == "__main__":
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: with 2+ gloo ranks the process otherwise hangs in garbage collection
    # of DeepSpeed's shared-memory comm objects after the group is destroyed (seen with DeepSpeed 0.19
    # on CPU). Everything is written and closed by now.
    os._exit(exit_code)
