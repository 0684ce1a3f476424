"""``eve evaluate``: run evaluation suites on an HF EVE model directory, optionally gate the result.

    eve evaluate MODEL_DIR --suite vqa=data/demo/eval/questions.jsonl
    eve evaluate MODEL_DIR --suite pope=pope.jsonl,image_folder=coco/val2014 \\
        --suite mme=MME_Benchmark_release_version --suite perplexity=heldout.txt \\
        --production-report prod/report.json --policy gate_policy.json --train-dataset runs/x/sft-data

``--suite KIND=PATH[,field=value...]`` (KIND: vqa, llava_vqa, pope, mme, caption, perplexity; fields
are those of the suite specs in ``tasks/evaluate/suites.py``, e.g. ``answers_file=``, ``name=``,
``skip_invalid=true``); ``--suites-file`` takes a JSON list of specs instead. Writes ``report.json``
and ``metrics.png`` to ``--output``. Exit status: 0 = evaluated (and gate passed), 1 = gate failed,
2 = bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="run evaluation suites on a model directory; optional gate")
    parser.add_argument("model_dir", type=Path, help="HF EVE model directory (weights + processor)")
    parser.add_argument("--suite", action="append", default=[], metavar="KIND=PATH[,field=value...]",
                        help="a suite to run (repeatable)")
    parser.add_argument("--suites-file", type=Path, help="JSON list of suite specs")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="skip (and report) malformed benchmark entries instead of failing")
    parser.add_argument("--output", type=Path, help="report folder (default: <EVE_HOME>/evaluations/<model hash>)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--template", default="vicuna_v1", help="prompt template: vicuna_v1 or plain")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--production-report", type=Path, help="the production model's report.json to compare with")
    parser.add_argument("--policy", type=Path, help="gate policy JSON (GatePolicy); runs the gate")
    parser.add_argument("--train-dataset", action="append", default=[], metavar="LOCATION",
                        help="eve-wds training dataset to check for contamination (repeatable)")
    parser.add_argument("--no-teacher", action="store_true",
                        help="contamination: exact image matches only, no teacher-embedding near duplicates")
    parser.add_argument("--near-duplicate-threshold", type=float, default=0.85)
    parser.set_defaults(func=evaluate_command)


def _suites(args: argparse.Namespace) -> list:
    from pydantic import TypeAdapter

    from tasks.evaluate.suites import SuiteSpec, parse_suite_shorthand

    suites = [parse_suite_shorthand(text) for text in args.suite]
    if args.suites_file:
        suites += TypeAdapter(list[SuiteSpec]).validate_json(args.suites_file.read_text())
    if args.skip_invalid:
        suites = [spec.model_copy(update={"skip_invalid": True}) for spec in suites]
    if not suites:
        raise ValueError("no suites: pass --suite KIND=PATH or --suites-file")
    return suites


def evaluate_command(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from tasks.evaluate.contamination import check_contamination, eval_inputs, iter_training_samples, teacher_embedder
    from tasks.evaluate.gates import GatePolicy, decide_gate
    from tasks.evaluate.harness import HarnessConfig, evaluate_model_dir
    from tasks.evaluate.readers import BenchmarkFormatError
    from tasks.evaluate.report import EvaluationReport, metric_table, plot_metrics
    from tasks.evaluate.suites import load_benchmark
    from tasks.platform import PlatformSettings

    try:
        if not args.model_dir.is_dir():
            raise OSError(f"model directory not found: {args.model_dir}")
        suites = _suites(args)
        config = HarnessConfig(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, template=args.template,
                               seed=args.seed, device=args.device, show_progress=not args.no_progress)
        policy = GatePolicy.model_validate_json(args.policy.read_text()) if args.policy else None
        production = EvaluationReport.load(args.production_report) if args.production_report else None
        benchmarks = {spec.name: load_benchmark(spec) for spec in suites}
    except (ValueError, ValidationError, BenchmarkFormatError, OSError) as exc:
        print(f"eve evaluate: {exc}", file=sys.stderr)
        return 2

    report = evaluate_model_dir(args.model_dir, suites, config, benchmarks)
    output = args.output or PlatformSettings.load().path("evaluations", report.weights_sha256[:16])
    report.save(output / "report.json")
    plot_metrics(report, output / "metrics.png", production=production)
    for suite in report.suites.values():
        if suite.skipped:
            print(f"{suite.name}: {len(suite.skipped)} invalid item(s) skipped, first: "
                  f"{suite.skipped[0].source}: {suite.skipped[0].reason}", file=sys.stderr)
    for row in metric_table(report, production):
        extra = f"  production {row['production']}  delta {row['delta']}" if production is not None else ""
        print(f"{row['metric']:<40} {row['candidate']:<12}{extra}")
    print(f"report: {output / 'report.json'}")

    contamination = None
    if args.train_dataset:
        images, texts = eval_inputs(benchmarks)
        contamination = check_contamination(
            images, iter_training_samples(args.train_dataset), texts,
            embed=None if args.no_teacher else teacher_embedder(),
            near_duplicate_threshold=args.near_duplicate_threshold, show_progress=not args.no_progress,
        )
        (output / "contamination.json").write_text(contamination.model_dump_json(indent=2))
        print(f"contamination: {contamination.num_contaminated_images} of {contamination.num_eval_images} "
              f"evaluation images found in training data")
    if policy is None:
        if contamination is not None and contamination.contaminated:
            return 1
        return 0
    decision = decide_gate(report, policy, production=production, contamination=contamination)
    (output / "gate.json").write_text(decision.model_dump_json(indent=2))
    print(decision.to_markdown())
    return 0 if decision.passed else 1
