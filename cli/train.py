"""``eve train``: run one training stage locally, or print a preset stage config.

    eve train STAGE_CONFIG.json [--nproc N]      # torchrun on this machine (gloo on CPU)
    eve train preset --stage 1 --preset tiny     # print the preset as JSON (edit, then run it)

Exit codes are the entry point's: 0 done, 2 bad config (checked here before launching), 75 a
checkpoint was flushed on SIGTERM/SIGUSR1 and the same command resumes ("requeue me").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="run one training stage (DeepSpeed via torchrun) or print a preset config",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", help='a stage config JSON file, or "preset" to print a preset config')
    parser.add_argument("--nproc", type=int, default=2, help="ranks on this machine (default 2)")
    parser.add_argument("--stage", default=None, help='preset: 1, 2, 3 or "base-llm"')
    parser.add_argument("--preset", default="tiny", help="preset: tiny or eve_7b")
    parser.add_argument("--output-dir", default=None, help="preset: output directory (default <EVE_HOME>/runs/<run name>)")
    parser.add_argument("--dataset", default="<dataset location>", help="preset: dataset directory or s3:// URL")
    parser.add_argument("--dataset-hash", default=None, help="preset: expected dataset hash")
    parser.add_argument("--init-checkpoint", default=None, help="preset: base LLM (stage 1) or previous stage output")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.target == "preset":
        return _print_preset(args)
    return run_local(Path(args.target), args.nproc)


def _print_preset(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from eve_model.training.config import StageConfigError, preset_stage_config
    from tasks.platform import PlatformSettings

    if args.stage is None:
        print("eve train preset: --stage is required (1, 2, 3 or base-llm)", file=sys.stderr)
        return 2
    stage = args.stage
    init = args.init_checkpoint
    if init is None and stage != "base-llm":
        init = "<base LLM directory>" if stage == "1" else f"<stage {int(stage) - 1} output>/final"
    output_dir = args.output_dir or str(PlatformSettings.load().home / "runs" / f"{args.preset}-stage-{stage}")
    try:
        config = preset_stage_config(
            args.preset, stage, output_dir=output_dir, dataset_location=args.dataset,
            dataset_hash=args.dataset_hash, init_checkpoint=init,
        )
    except (StageConfigError, ValidationError, ValueError) as exc:
        print(f"eve train preset: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(config.to_json_dict(), indent=2, sort_keys=True))
    return 0


def run_local(config_path: Path, nproc: int) -> int:
    """Check the config, then run it under torchrun with ``nproc`` ranks; returns the job's exit code."""
    from pydantic import ValidationError

    from eve_model.training.config import StageConfig, StageConfigError
    from eve_model.training.engine import REQUEUE_MARKER_NAME, preflight
    from eve_model.training.signals import CONFIG_ERROR_EXIT_CODE, HANDLED_SIGNALS, REQUEUE_EXIT_CODE

    if nproc < 1:
        print("eve train: --nproc must be >= 1", file=sys.stderr)
        return CONFIG_ERROR_EXIT_CODE
    try:
        config = StageConfig.read(config_path)
        preflight(config, world_size=nproc)
    except (StageConfigError, ValidationError) as exc:
        print(f"eve train: cannot start {config_path}:\n{exc}", file=sys.stderr)
        return CONFIG_ERROR_EXIT_CODE

    command = [sys.executable, "-m", "eve_model.train", str(config_path)]
    if nproc > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", "eve_model.train", str(config_path)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    child = subprocess.Popen(command, env=env)

    def forward(signum, _frame):
        child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in HANDLED_SIGNALS}
    try:
        returncode = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # torchrun reports a worker's 75 as a generic failure; the marker says the ranks checkpointed.
    if returncode != 0 and (Path(config.output_dir) / REQUEUE_MARKER_NAME).exists():
        return REQUEUE_EXIT_CODE
    return returncode
