"""``eve train``: run one training stage locally, or print a preset stage config.

    eve train STAGE_CONFIG.json [--nproc N]      # a local job of N ranks (gloo on CPU)
    eve train preset --stage 1 --preset tiny     # print the preset as JSON (edit, then run it)

The stage runs as a job of the local submission backend (``tasks.submit.local``), through the
platform's one submission path (``tasks.submit.run.run_job_to_end``): the same supervisor, launch,
preflight and exit-code handling as a stage of a retrain. Its log streams to this terminal and is
kept under ``<output_dir>/logs``. SIGTERM, SIGUSR1 and Ctrl-C are passed on to the job, which
flushes a checkpoint and stops; running the same command again resumes from it.

Exit codes are ``eve_model.exit_codes.ExitCode``: 0 done, 2 bad config (the job's preflight says
why in one line), 75 a checkpoint was flushed on a stop signal and the same command resumes
("requeue me"); anything else is a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from eve_model.exit_codes import ExitCode


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="run one training stage (a local DeepSpeed job) or print a preset config",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", help='a stage config JSON file, or "preset" to print a preset config')
    parser.add_argument("--nproc", type=int, default=2, help="ranks on this machine (default 2)")
    parser.add_argument("--time-limit-minutes", type=int, default=None,
                        help=f"stop the job (checkpoint, exit {int(ExitCode.REQUEUE)}) after this many minutes "
                        "(default: no limit)")
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
    return run_local(Path(args.target), args.nproc, time_limit_minutes=args.time_limit_minutes)


def _print_preset(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from eve_model.training.config import StageConfigError, StageId, preset_stage_config
    from tasks.platform import PlatformSettings

    if args.stage is None:
        print("eve train preset: --stage is required (1, 2, 3 or base-llm)", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    try:
        stage = StageId.parse(args.stage)
    except StageConfigError as exc:
        print(f"eve train preset: {exc}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    init = args.init_checkpoint
    if init is None and stage != StageId.BASE_LLM:
        init = "<base LLM directory>" if stage == StageId.PREALIGN else f"<stage {stage.previous} output>/final"
    output_dir = args.output_dir or str(PlatformSettings.load().home / "runs" / f"{args.preset}-stage-{stage}")
    try:
        config = preset_stage_config(
            args.preset, stage, output_dir=output_dir, dataset_location=args.dataset,
            dataset_hash=args.dataset_hash, init_checkpoint=init,
        )
    except (StageConfigError, ValidationError, ValueError) as exc:
        print(f"eve train preset: {exc}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    print(json.dumps(config.to_json_dict(), indent=2, sort_keys=True))
    return ExitCode.COMPLETED


def _to_terminal(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def run_local(config_path: Path, nproc: int, time_limit_minutes: int | None = None) -> int:
    """Run the stage config at ``config_path`` as a local job of ``nproc`` ranks; returns its exit code.

    Only the config's syntax is checked here (its ``output_dir`` names the log folder); the checks
    that need the world, the dataset and the init checkpoint are the job's preflight.
    """
    from pydantic import ValidationError

    from eve_model.train import job_command
    from eve_model.training.config import StageConfig, StageConfigError
    from tasks.submit.run import JobFailed, run_job_to_end
    from tasks.submit.spec import JobSpec

    if nproc < 1:
        print("eve train: --nproc must be >= 1", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    try:
        config = StageConfig.read(config_path)
    except (StageConfigError, ValidationError) as exc:
        print(f"eve train: cannot start {config_path}:\n{exc}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR

    spec = JobSpec(
        name=f"eve train {config.run_name}",
        command=job_command(config_path.resolve()),
        workdir=Path.cwd(),
        # Unbuffered ranks, so that their lines reach this terminal as they are printed.
        env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONUNBUFFERED": "1"},
        tasks_per_node=nproc,
        time_limit_minutes=time_limit_minutes,
        # A local (CPU) stage saves in seconds; the pre-timeout signal lead is derived from these.
        checkpoint_save_seconds=5,
        max_step_seconds=5,
        pre_timeout_signal_seconds=None if time_limit_minutes else 0,
        max_resubmits=0,
        log_dir=Path(config.output_dir) / "logs",
        python_executable=sys.executable,
    )
    try:
        run_job_to_end(spec, "local", poll_seconds=0.5, on_log=_to_terminal, relay_signals=True)
    except JobFailed as failure:
        status, handle = failure.status, failure.handle
        print(
            f"eve train: {config_path} ended {status.state.value}, exit {ExitCode.describe(status.exit_code)}: "
            f"{status.reason} (log {handle.log_path})",
            file=sys.stderr,
        )
        return status.exit_code if status.exit_code is not None else ExitCode.FAILED
    return ExitCode.COMPLETED
