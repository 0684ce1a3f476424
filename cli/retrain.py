"""``eve retrain``: a retrain from a named recipe or a parameter file.

    eve retrain --recipe paper-slurm --dry-run --render DIR    write every stage's job definitions
    eve retrain --config retrain.yaml --dry-run --render DIR   (sbatch scripts, manifests, DeepSpeed
                                                               JSON, stage configs) and submit nothing
    eve retrain --recipe demo                                  run the retrain flow

The file format is ``flows.recipes.load_retrain_config``'s: a whole ``RetrainParameters`` or a
recipe name with arguments and changes. A dry run plans every stage as the retrain would (dataset
hashes and parent weights are placeholders: nothing has run yet) and renders each job exactly as
its backend would submit it, so a cluster admin can read them first. Exit codes: 0 written; 2 the
parameters or a job definition were refused (the reason on one line).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eve_model.exit_codes import ExitCode


def _parameters(args: argparse.Namespace):
    from flows.recipes import RECIPES, load_retrain_config

    if args.config is not None:
        return load_retrain_config(args.config)
    if args.recipe not in RECIPES:
        raise ValueError(f"unknown recipe {args.recipe!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[args.recipe]()


def _render(args: argparse.Namespace, params) -> int:
    from tasks.stages import plan_dry_run
    from tasks.submit.dry_run import write_job_definitions

    training = params.training
    home = Path(args.home or training.job.env.get("EVE_HOME") or _platform_home())
    planned_jobs = [(planned.config, spec) for planned, spec in plan_dry_run(training, home)]
    written = write_job_definitions(planned_jobs, training.backend, training.backend_options, Path(args.render))
    for config, spec in planned_jobs:
        print(f"stage {config.stage}: {spec.world_size} ranks on {spec.nodes} node(s), {training.backend}: "
              f"{Path(args.render) / f'stage-{config.stage}'}")
    print(f"wrote {len(written)} files under {args.render}; nothing was submitted")
    return ExitCode.COMPLETED


def _platform_home() -> Path:
    from tasks.platform import PlatformSettings

    return PlatformSettings.load().home


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    try:
        params = _parameters(args)
        if args.dry_run:
            return _render(args, params)
    except (ValueError, ValidationError, OSError) as error:
        print(f"eve retrain: {error}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    from flows.retrain_flow import retrain

    retrain(params)
    return ExitCode.COMPLETED


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("retrain", help="run a retrain, or render its jobs without submitting (--dry-run)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--recipe", help="a named recipe (demo, paper-slurm, paper-k8s)")
    source.add_argument("--config", type=Path, help="a JSON/YAML file of retrain parameters or a recipe with changes")
    parser.add_argument("--dry-run", action="store_true", help="plan and render every stage's job; submit nothing")
    parser.add_argument("--render", type=Path, help="with --dry-run: the folder the job definitions are written to")
    parser.add_argument("--home", type=Path, help="platform home the jobs will use (default: the recipe's EVE_HOME, else $EVE_HOME)")
    parser.set_defaults(func=lambda args: run(args) if not args.dry_run or args.render else _needs_render())


def _needs_render() -> int:
    print("eve retrain: --dry-run needs --render DIR", file=sys.stderr)
    return ExitCode.CONFIG_ERROR
