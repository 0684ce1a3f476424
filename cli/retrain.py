"""``eve retrain``: a retrain from a configuration file or a named recipe.

    eve retrain --print-config demo > retrain.yaml             a recipe written out, every field documented
    eve retrain --config retrain.yaml --dry-run                the plan: datasets, stages to train or reuse,
                                                               backend, resources; nothing runs
    eve retrain --config retrain.yaml --dry-run --render DIR   also every stage's job definitions (sbatch
                                                               scripts, manifests, DeepSpeed JSON, stage configs)
    eve retrain --config retrain.yaml                          run the retrain flow
    eve retrain --config retrain.yaml --dataset dataset/photos-raw/0123456789abcdef
                                                               train on a registered raw version instead

The file is read by ``flows.recipes.load_retrain_config`` into the flow's own parameter models (a whole
``RetrainParameters``, or a recipe name with arguments and changes); unknown fields and wrong values
are refused with the field named. The main thresholds have flags; ``--set path.to.field=VALUE`` sets
any field. Exit codes: 0 done (or planned, or written); 2 the parameters or a job definition were
refused (every problem on its own line); 1 the retrain failed (the reason on its last line).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from eve_model.exit_codes import ExitCode

CAPTION_PROFILES = ("teacher-captions", "short-labels")


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    """The main thresholds' flags as ``--set`` assignments (one place decides what each flag sets)."""
    import json

    def local(path: str) -> str:  # relative to where the command runs, written down absolute
        return path if "://" in path else str(Path(path).resolve())

    pairs = []
    if args.eval_questions:
        args.eval_questions = local(args.eval_questions)
    if args.source:
        pairs += [f"data.sources={json.dumps([{'location': local(location)} for location in args.source])}",
                  "data.use_demo_source=false", "data.dataset=null"]
    if args.sft_source:
        pairs += [f"data.sft_sources={json.dumps([{'location': local(location)} for location in args.sft_source])}",
                  "data.sft_dataset=null"]
    for flag, path in (("name", "data.dataset_name"), ("eval_questions", "evaluation.eval_questions_path"),
                       ("caption_profile", "caption_quality.profile"), ("curation_target", "data.curation.target_num_items"),
                       ("max_filtered_fraction", "caption_quality.max_filtered_fraction"), ("backend", "training.backend")):
        value = getattr(args, flag)
        if value is not None:
            pairs.append(f"{path}={json.dumps(value)}")
    if args.min_side is not None:
        pairs += [f"data.validation.{side}_pixels={args.min_side}" for side in ("min_width", "min_height")]
    return pairs


def _with_gate_minimums(params, minimums: list[str]):
    from flows.parameter_files import ParameterFileError
    from tasks.evaluate.gates import MetricThreshold

    thresholds = list(params.evaluation.gate.thresholds)
    for text in minimums:
        metric, separator, value = text.partition("=")
        try:
            minimum = float(value)
        except ValueError:
            minimum = None
        if not separator or not metric or minimum is None:
            raise ParameterFileError(f"--gate-minimum expects METRIC=NUMBER (e.g. demo_vqa/accuracy=0.3), got {text!r}")
        thresholds = [t for t in thresholds if t.metric != metric] + [MetricThreshold(metric=metric, minimum=minimum)]
    gate = params.evaluation.gate.model_copy(update={"thresholds": thresholds})
    return params.model_copy(update={"evaluation": params.evaluation.model_copy(update={"gate": gate})})


def build_parameters(args: argparse.Namespace):
    """The run's ``RetrainParameters``: the file or recipe, then the flags, then ``--set``, then
    ``--dataset``; raises ``ParameterFileError`` naming every problem."""
    from flows.parameter_files import ParameterFileError
    from flows.recipes import RECIPES, load_retrain_config, with_dataset, with_overrides

    if args.config is not None:
        params = load_retrain_config(args.config)
    elif args.recipe in RECIPES:
        params = RECIPES[args.recipe]()
    else:
        raise ParameterFileError(f"--recipe: unknown recipe {args.recipe!r}; choose one of {', '.join(sorted(RECIPES))}")
    origin = str(args.config or f"recipe {args.recipe}")
    params = with_overrides(params, _flag_overrides(args) + list(args.overrides), origin)
    if args.gate_minimum:
        params = _with_gate_minimums(params, args.gate_minimum)
    if args.dataset:
        params = with_dataset(params, args.dataset)
    return params


def _print_plan(params) -> None:
    from flows.plan import plan_retrain

    for line in plan_retrain(params).lines():
        print(line)


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


def _report(result) -> None:
    for stage in result.stages:
        how = "reused (unchanged inputs)" if stage.skipped else f"trained in {stage.wall_seconds:.0f} s"
        print(f"  stage {stage.stage:<8} {how:<28} {stage.model_dir}")
    gate = result.evaluation.gate
    print(f"evaluation gate: {'passed' if gate.passed else 'FAILED'}; "
          + ", ".join(f"{key} {value:.4g}" for key, value in sorted(result.evaluation.metrics.items())[:8]))
    print(f"candidate: eve@{result.candidate_version}; promotion: {result.promotion}")


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from flows.parameter_files import ParameterFileError

    if args.print_config:
        from flows.recipes import recipe_as_yaml

        try:
            sys.stdout.write(recipe_as_yaml(args.print_config))
        except ParameterFileError as error:
            print(f"eve retrain: {error}", file=sys.stderr)
            return ExitCode.CONFIG_ERROR
        return ExitCode.COMPLETED
    if args.render and not args.dry_run:
        print("eve retrain: --render DIR needs --dry-run (it writes the jobs instead of submitting them)", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    try:
        params = build_parameters(args)
        if args.dry_run:
            _print_plan(params)
            return _render(args, params) if args.render else ExitCode.COMPLETED
        missing = params.missing_for_training()
        if missing:
            raise ParameterFileError("cannot train:\n  " + "\n  ".join(missing))
    except (ValueError, ValidationError, OSError) as error:
        print(f"eve retrain: {error}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    return _run_retrain(params)


def _run_retrain(params) -> int:
    from tasks.orchestration import ensure_prefect_server, ensure_worker, ui_url

    api_url = ensure_prefect_server()
    if params.promotion.mode == "detached":  # the promotion waits on the platform's worker for its reviewer
        ensure_worker()
        from flows.deployments import apply_deployments  # after the server: Prefect reads its URL on import

        apply_deployments(["promote"])
    print(f"Prefect UI {ui_url(api_url)}")
    for line in _rules(params):
        print(line)
    from flows.retrain_flow import retrain

    try:
        result = retrain(params)
    except Exception as error:  # noqa: BLE001 - the flow run's failure, reported in one line
        print(f"eve retrain: the retrain failed: {error}", file=sys.stderr)
        return ExitCode.FAILED
    _report(result)
    return ExitCode.COMPLETED


def _rules(params) -> list[str]:
    from flows.plan import plan_retrain

    return plan_retrain(params).data


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "retrain", help="run a retrain from a config file or recipe, plan it (--dry-run), or print a recipe's config",
        description="Run a retrain from a configuration file or a named recipe. Start from --print-config RECIPE.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="a YAML/JSON configuration (whole parameters, or a recipe with changes)")
    source.add_argument("--recipe", help="a named recipe: demo, paper-slurm, paper-k8s")
    source.add_argument("--print-config", metavar="RECIPE", help="print a recipe as a commented configuration file and exit")
    parser.add_argument("--dataset", help="train on a registered raw version (tag, dataset hash or prefix) instead of the sources")
    data = parser.add_argument_group("data (main thresholds; --set reaches every field)")
    data.add_argument("--source", action="append", metavar="LOCATION", help="a caption source (folder, file or s3://); repeatable")
    data.add_argument("--sft-source", action="append", metavar="LOCATION", help="a conversation (LLaVA-style) source; repeatable")
    data.add_argument("--name", help="dataset name (versions NAME-raw, NAME-curated, ...)")
    data.add_argument("--min-side", type=int, metavar="PX", help="validation: smallest accepted width and height")
    data.add_argument("--curation-target", type=int, metavar="N", help="curation: images to keep (diversity sampling)")
    data.add_argument("--caption-profile", choices=CAPTION_PROFILES, help="caption gate profile")
    data.add_argument("--max-filtered-fraction", type=float, metavar="F", help="caption gate: largest share filtered")
    data.add_argument("--eval-questions", metavar="PATH", help="held-out VQA questions (JSONL) for the evaluation gate")
    data.add_argument("--gate-minimum", action="append", metavar="METRIC=VALUE",
                      help="evaluation gate: the candidate's minimum on a metric, e.g. demo_vqa/accuracy=0.3; repeatable")
    data.add_argument("--backend", choices=("local", "slurm", "k8s"), help="where the stage jobs run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="set any field, e.g. --set training.stage_overrides.3.max_steps=50 (value read as YAML)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; with --render also write every stage's job")
    parser.add_argument("--render", type=Path, help="with --dry-run: the folder the job definitions are written to")
    parser.add_argument("--home", type=Path, help="--render: platform home the jobs will use (default: the recipe's EVE_HOME, else $EVE_HOME)")
    parser.set_defaults(func=run)
