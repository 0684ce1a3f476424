"""``eve demo``: the embedded default, one command, no configuration, no network.

Starts the local Prefect server when none is configured, creates the platform home, runs the
whole retrain on the bundled demo data (tiny EVE, 2 local gloo ranks), and ends with a
promotion waiting for a reviewer in the Prefect UI. It then prints what the model learned:
held-out VQA accuracy against chance, against always giving the most common answer, and
against the same model before SFT (its stage-2 checkpoint).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def answer_baselines(questions_path: str | Path) -> dict:
    """Accuracy of uniform guessing among each type's answers, and of always giving its most common answer:
    overall (``uniform_chance``, ``majority_answer``) and per question type (``by_type``), from
    ``tasks.evaluate.baselines`` (the numbers the review form shows)."""
    from tasks.evaluate.baselines import answer_baselines as suite_baselines
    from tasks.evaluate.readers import EvalItem

    rows = [json.loads(line) for line in Path(questions_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    items = [EvalItem(item_id=str(index), source=f"{questions_path}:{index + 1}", references=(str(row["answer"]),),
                      group=row["question_type"]) for index, row in enumerate(rows)]
    baselines = suite_baselines("demo_vqa", items)
    return {
        "uniform_chance": baselines.overall.uniform_chance,
        "majority_answer": baselines.overall.majority_answer,
        "by_type": {kind: {"uniform_chance": group.uniform_chance, "majority_answer": group.majority_answer}
                    for kind, group in sorted(baselines.by_type.items())},
    }


def _run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    from cli.server import start_services
    from tasks.orchestration import ui_url
    from tasks.platform import PlatformSettings

    settings = PlatformSettings.load()
    api_url = start_services()
    reviewer_password, policy = _prepare_review()
    print(f"[eve demo] platform home {settings.home}")
    print(f"[eve demo] Prefect UI {ui_url(api_url)}  (server started in {time.monotonic() - started:.0f} s)")

    from flows.recipes import demo
    from flows.retrain_flow import retrain
    from tasks.data.demo_source import ensure_demo_data, publish_demo_data

    ensure_demo_data()
    print(f"[eve demo] data/ (data.dvc) pushed to {publish_demo_data()}: `dvc pull` works in this checkout")
    result = retrain(demo())

    from eve_model.training.config import StageId
    from tasks.evaluate.harness import HarnessConfig, evaluate_model_dir
    from tasks.evaluate.suites import PerplexitySuite
    from tasks.evaluate.suites import demo_evaluation_suites

    suites_path = _eval_questions_path()
    harness = HarnessConfig(batch_size=16, max_new_tokens=16, show_progress=False)
    before_sft = result.before_sft_metrics  # the retrain evaluated stage 2 for the review form
    # Stage 1 trains only the PEL and PAL: its LLM is the base LLM, bit for bit.
    stage1 = next(s for s in result.stages if s.stage == StageId.PREALIGN)
    text_suites = [spec for spec in demo_evaluation_suites(suites_path) if isinstance(spec, PerplexitySuite)]
    base_llm = evaluate_model_dir(stage1.model_dir, text_suites, harness).flat_metrics()
    baselines = answer_baselines(suites_path)
    metrics = result.evaluation.metrics
    elapsed = time.monotonic() - started

    print("\n=== EVE demo retrain finished in %.1f min ===" % (elapsed / 60))
    for stage in result.stages:
        how = "cached (unchanged inputs)" if stage.skipped else f"trained in {stage.wall_seconds:.0f} s"
        print(f"  stage {stage.stage:<8} {how:<28} {stage.model_dir}")
    print("\nHeld-out VQA accuracy (demo_vqa, exact match):")
    print(f"  trained model (stage 3)      {metrics.get('demo_vqa/accuracy', float('nan')):.3f}")
    print(f"  same model before SFT        {before_sft.get('demo_vqa/accuracy', float('nan')):.3f}")
    print(f"  uniform chance per type      {baselines['uniform_chance']:.3f}")
    print(f"  most common answer per type  {baselines['majority_answer']:.3f}")
    for key, value in sorted(metrics.items()):
        if key.startswith("demo_vqa/accuracy_"):
            kind = key.removeprefix("demo_vqa/accuracy_")
            chance = baselines["by_type"].get(kind, {})
            print(f"    {kind:<26} {value:.3f}   (most common answer {chance.get('majority_answer', float('nan')):.3f}, "
                  f"uniform {chance.get('uniform_chance', float('nan')):.3f})")
    if "heldout_text/perplexity" in metrics:
        print(f"  held-out text perplexity     {metrics['heldout_text/perplexity']:.2f}"
              f"  (base LLM {base_llm.get('heldout_text/perplexity', float('nan')):.2f}; SFT scores answers only)")
    version = result.candidate_version
    print(f"\nCandidate registered as eve@{version}; promotion: {result.promotion}")
    print(review_instructions(version, ui_url(api_url), reviewer_password, policy.rule_for("eve").allowed_reviewers))
    print("Then: .venv/bin/eve registry show; .venv/bin/eve lineage eve@" + str(version) + "; .venv/bin/eve audit verify")
    summary = {
        "elapsed_seconds": round(elapsed, 1),
        "candidate_version": version,
        "metrics": metrics,
        "before_sft": before_sft,
        "base_llm": base_llm,
        "baselines": baselines,
        "stages": [{"stage": s.stage, "skipped": s.skipped, "wall_seconds": s.wall_seconds} for s in result.stages],
    }
    (settings.path("demo") / "last_run.json").write_text(json.dumps(summary, indent=2))
    return 0


def _prepare_review():
    """The demo reviewer's account (a fresh one-time password) and, on a first run, a policy that lets
    it approve; an operator's own policy and accounts are left as they are."""
    from tasks.accounts import DEMO_REVIEWER, issue_demo_reviewer
    from tasks.policy import ensure_policy

    password = issue_demo_reviewer()
    return password, ensure_policy("eve", [DEMO_REVIEWER], updated_by="eve demo")


def review_instructions(version: str, ui: str, password: str | None, allowed_reviewers: list[str]) -> str:
    """How the reviewer logs in and decides, as the demo prints it."""
    from tasks.accounts import DEMO_REVIEWER

    comment = "VQA above chance and the pre-SFT model"
    if password is None:
        login = f"log in as one of {', '.join(allowed_reviewers)} with your own password"
        terminal = f"  .venv/bin/eve promote approve {version} --user NAME --comment '{comment}'"
    else:
        login = (f"log in as   {DEMO_REVIEWER}:{password}   (one-time password, shown once; "
                 f"`eve users reset-password {DEMO_REVIEWER}` issues another)")
        terminal = (f"  PREFECT_API_AUTH_STRING='{DEMO_REVIEWER}:{password}' .venv/bin/eve promote approve {version} "
                    f"--comment '{comment}'")
    return (
        f"The promotion waits for an authenticated reviewer (allowed: {', '.join(allowed_reviewers)}).\n"
        f"Review it in the Prefect UI: {ui}/runs  (flow run promote-eve@{version}, Resume);\n"
        f"  {login}\nor from the terminal:\n{terminal}"
    )


def _eval_questions_path() -> str:
    from tasks.data.demo_source import demo_sources, ensure_demo_data

    return str(demo_sources(ensure_demo_data()).eval_questions_path)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the whole retrain on the embedded default")
    parser.set_defaults(func=_run)
