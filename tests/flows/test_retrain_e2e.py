"""End to end, watched in a real browser: a small demo retrain through the platform's real Prefect server,
the local backend (2 gloo ranks per stage) and a real process worker that owns the detached promotion.

A reviewer logged in to the Prefect UI in headless Chromium watches stage 2's live progress, follows the
links from the retrain to its promotion and back, reads the review form (the gate's rules with their
thresholds, the baselines, the sample images) and approves there. Then the registry, the lineage manifest,
the OpenLineage event chain (validated against the spec's RunEvent structure), the model card in the
registered checkpoint, the W&B group, and a second run with unchanged inputs that trains nothing and mints
no new version. Each view is saved as a screenshot (the test's tmp dir, and ``EVE_SCREENSHOT_DIR`` when
set)."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures.browser import browser_pages, decide_in_form, log_in, open_review_form
from tests.tasks.lineage.test_openlineage import RUN_EVENT

pytestmark = pytest.mark.slow

PROGRESS_STAGE_STEPS = 120
"""Stage 2 runs long enough (tens of seconds here) for the browser to see it half done."""


def _small_stages(pretrain_steps: int = PROGRESS_STAGE_STEPS):
    from eve_model.training.config import StageId, StageOverrides

    tiny = dict(global_batch_size_samples=4, micro_batch_size_samples=2, progress_interval_seconds=1.0)
    steps = {StageId.BASE_LLM: 4, StageId.PREALIGN: 2, StageId.PRETRAIN: pretrain_steps, StageId.SFT: 3}
    return {stage: StageOverrides(max_steps=count, **tiny) for stage, count in steps.items()}


def _small_params(demo_dir: Path, mode: str, pretrain_steps: int = PROGRESS_STAGE_STEPS):
    """The demo recipe at test size. Stage 2 runs ``pretrain_steps`` (long enough by default for the
    browser to watch its progress; tests that do not watch it pass a few)."""
    from flows.parameters import EvaluationParameters, PromotionParameters
    from flows.recipes import demo
    from tasks.caption.config import CaptionConfig
    from tasks.data.demo_source import demo_sources
    from tasks.evaluate.gates import GatePolicy, MetricThreshold
    from tasks.evaluate.harness import HarnessConfig
    from tasks.quality.config import CaptionGateThresholds
    from tasks.stages import TrainingParameters

    sources = demo_sources(demo_dir)
    params = demo()
    return params.model_copy(update={
        "data": params.data.model_copy(update={
            "use_demo_source": False, "sources": sources.captions, "sft_sources": sources.sft, "curate": False,
        }),
        "captions": CaptionConfig(backend="source", source_field="true_caption"),
        # 24 scenes: a few repeated descriptions are a large share, so only hard row rules apply.
        "caption_quality": CaptionGateThresholds(max_duplicate_rate=1.0, max_filtered_fraction=1.0),
        "training": TrainingParameters(stage_overrides=_small_stages(pretrain_steps)),
        "evaluation": EvaluationParameters(
            harness=HarnessConfig(batch_size=8, max_new_tokens=4, show_progress=False),
            gate=GatePolicy(thresholds=[MetricThreshold(metric="demo_vqa/accuracy", minimum=0.0)]),
            eval_questions_path=sources.eval_questions_path,
        ),
        "promotion": PromotionParameters(mode=mode),
    })


class Screenshots:
    """Full-page screenshots of the views the issue names, kept for a person to look at."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.taken: list[Path] = []

    def take(self, page, name: str) -> Path:
        path = self.folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        if os.environ.get("EVE_SCREENSHOT_DIR"):
            Path(os.environ["EVE_SCREENSHOT_DIR"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(os.environ["EVE_SCREENSHOT_DIR"]) / path.name)
        return path


def _artifacts(key: str, flow_run_id=None, since=None):
    """Artifacts with ``key`` (of one flow run, or created at or after ``since``: the session's server
    also holds other tests' retrains, whose stage artifacts have the same keys)."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]) if flow_run_id else None,
        ))
    return [artifact for artifact in found if since is None or artifact.created >= since]


def _flow_run(run_id):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def _wait(predicate, what: str, timeout_seconds: float, failed=lambda: None):
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if (error := failed()) is not None:
            raise error
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {timeout_seconds} s")


def _events() -> list[dict]:
    from tasks.lineage.openlineage import events_path

    return [json.loads(line) for line in events_path().read_text().splitlines() if line.strip()]


def _hashes(datasets: list[dict]) -> list[str]:
    return [d["facets"]["version"]["datasetVersion"] for d in datasets]


def _check_openlineage_chain(first, lineage) -> None:
    """Every step START -> COMPLETE under one run id, valid RunEvents, and the content hashes chain up:
    ingest -> caption gate -> stage 1 -> 2 -> 3 -> evaluation gate / registration -> promotion."""
    import jsonschema

    events = _events()
    for event in events:
        jsonschema.validate(event, RUN_EVENT, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    by_run: dict[str, list[dict]] = {}
    for event in events:
        by_run.setdefault(event["run"]["runId"], []).append(event)
    completed: dict[str, list[dict]] = {}
    for run_events in by_run.values():
        assert [e["eventType"] for e in run_events] == ["START", "COMPLETE"], run_events
        assert len({e["job"]["name"] for e in run_events}) == 1
        completed.setdefault(run_events[-1]["job"]["name"], []).append(run_events[-1])
    expected = {"ingest", "register-dataset", "caption", "caption-gate", "instruction-gate", "stage-base-llm",
                "stage-1", "stage-2", "stage-3", "evaluation-gate", "register-model", "promote"}
    assert expected <= set(completed), sorted(completed)
    # Every event names the Prefect flow run it ran in.
    assert all(e["run"]["facets"]["parent"]["run"]["runId"] for e in events)

    by_role = {d.role: d.dataset_hash for d in lineage.datasets}
    ingested = {h for e in completed["ingest"] for h in _hashes(e["outputs"])}
    assert by_role["ingested"] in ingested
    (gate,) = completed["caption-gate"]
    assert _hashes(gate["inputs"]) == [by_role["captioned"]] and _hashes(gate["outputs"]) == [by_role["filtered"]]
    (caption,) = completed["caption"]
    assert by_role["captioned"] in _hashes(caption["outputs"])
    assert any(d["facets"]["eve_content"]["kind"] == "model" for d in caption["inputs"])  # the teacher
    previous = None
    for result in first.stages:
        (stage,) = completed[f"stage-{result.stage}"]
        read = _hashes(stage["inputs"])
        assert read[0] == result.dataset_hash and (previous is None or read[1] == previous)
        assert _hashes(stage["outputs"]) == [result.weights_sha256]
        previous = result.weights_sha256
    (registered,) = completed["register-model"]
    assert _hashes(registered["inputs"]) == [previous]
    assert registered["outputs"][0]["name"] == f"eve@{first.candidate_version}"
    (evaluation,) = completed["evaluation-gate"]
    assert previous in _hashes(evaluation["inputs"])
    (promotion,) = completed["promote"]
    assert promotion["inputs"][0]["name"] == f"eve@{first.candidate_version}"
    assert (promotion["outputs"][0]["name"], _hashes(promotion["outputs"])) == ("eve@production", [previous])


def _check_model_card(registry, first, lineage) -> None:
    """The registered checkpoint carries the version's card (written at registration, DVC-tracked with the
    weights); the registry's current copy also holds the browser approval, and `eve registry show` prints it."""
    import contextlib
    import io

    from cli.main import main as eve
    from tasks.registry_card import read_model_card_sections

    version = first.candidate_version
    registered = read_model_card_sections(registry.repo_dir / "models" / "eve")
    assert {"Intended use", "Training data", "Training procedure", "Evaluation", "Limitations", "Approval"} <= set(registered)
    assert all(d.dataset_hash in registered["Training data"] for d in lineage.datasets)
    assert first.run_name in registered["Training procedure"] and "| recipe | `demo` |" in registered["Training procedure"]
    assert "most common answer" in registered["Evaluation"] and "before SFT" in registered["Evaluation"]
    assert "not approved" in registered["Approval"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert eve(["registry", "show", version]) == 0
    approved = out.getvalue().split("## Approval", 1)[1]
    assert "carol" in approved and "browser" in approved and "Holds production since" in approved


def _check_logs(first) -> None:
    """The retrain's logs (its run and its parts): stage progress as lines, no progress bar, no library hints."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterName,
        FlowRunFilterParentFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        (root,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[first.run_name])))
        parts = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[root.id])))
        names = sorted(run.name.rsplit("-", 2)[0] for run in parts)
        assert names == ["data-demo", "evaluate-demo", "register-demo", "train-stages-demo"], names
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[root.id, *[r.id for r in parts]])))
    messages = [log.message for log in logs]
    stage2 = [m for m in messages if m.startswith("[eve.progress] stage 2 ")]
    assert len(stage2) >= 3 and stage2[-1].startswith(f"[eve.progress] stage 2 step {PROGRESS_STAGE_STEPS}/")
    assert not [m for m in messages if "%|" in m or "it/s]" in m], "a progress bar reached the run's log"
    assert not [m for m in messages if "You can now commit the changes to git" in m or "OMP_NUM_THREADS" in m]


def _check_wandb(first, home: Path) -> None:
    from tests.wandb_records import offline_runs, read_offline_run

    runs = [read_offline_run(path) for path in offline_runs(home / "wandb")]
    grouped = [run for run in runs if run.group == first.run_name]
    names = sorted(run.name for run in grouped if run.name.startswith("tiny-stage-"))
    assert names == ["tiny-stage-1", "tiny-stage-2", "tiny-stage-3", "tiny-stage-base-llm"], names
    evaluation = next(run for run in grouped if run.name.startswith("evaluate-"))
    assert "sample_answers" in evaluation.tables and "recipe:demo" in evaluation.tags
    assert int(evaluation.summary["sample_answers/nrows"]) > 0
    (table,) = [a for a in evaluation.artifacts if a["type"] == "run_table"]
    images = [path for path in table["files"] if path.startswith("media/images/") and path.endswith(".png")]
    assert images and all(Path(table["files"][path]).exists() for path in images)  # staged for `wandb sync`
    assert {a["type"] for a in evaluation.artifacts} == {"run_table", "model", "dataset"}
    stage3 = next(run for run in grouped if run.name == "tiny-stage-3")
    assert "recipe:demo" in stage3.tags and "stage:3" in stage3.tags
    assert any(json.loads(a["metadata"])["content_hash"] == first.stages[-1].weights_sha256 for a in stage3.artifacts)


def test_a_small_retrain_watched_linked_and_approved_in_the_browser_then_an_unchanged_rerun_trains_nothing(
    prefect_server, prefect_accounts, chromium, eve_home, tmp_path
):
    from playwright.sync_api import expect

    from eve_model.shards import verify_dataset
    from flows.deployments import apply_deployments
    from flows.retrain_flow import retrain
    from tasks.data.demo_source import DemoDataConfig, generate_demo_data
    from tasks.lineage.store import read_lineage
    from tasks.orchestration import ensure_worker, stop_local_server
    from tasks.platform import PlatformSettings
    from tasks.registry import ModelRegistry
    from tasks.stages import progress_artifact_key
    from tests.fixtures.promotion_runs import use_policy

    demo_dir = generate_demo_data(tmp_path / "raw", DemoDataConfig.tiny())
    use_policy(reviewers=("carol",), timeout_seconds=900)
    ensure_worker(PlatformSettings.load(), auth_string=prefect_accounts.auth("eve-worker", kind="worker"))
    apply_deployments(["promote"])
    ui = prefect_server.removesuffix("/api")
    shots = Screenshots(tmp_path / "screenshots")
    outcome: dict = {}

    def run_retrain() -> None:
        try:
            outcome["first"] = retrain(_small_params(demo_dir, mode="detached"))
        except BaseException as error:  # surfaced by the waits below
            outcome["error"] = error

    from datetime import datetime, timezone

    started = datetime.now(timezone.utc)
    retraining = threading.Thread(target=run_retrain, daemon=True)
    retraining.start()
    failed = lambda: outcome.get("error")  # noqa: E731
    try:
        with browser_pages(chromium) as (page,):
            log_in(page, ui, prefect_accounts.auth("carol"))

            # 1. Stage 2's progress while it runs: the artifact's page shows a share below 100 % and the ETA.
            key = progress_artifact_key("2")
            shown = None
            while shown is None:
                artifact = _wait(lambda: next((a for a in _artifacts(key, since=started) if a.data is not None), None),
                                 "stage 2's progress artifact", 900, failed)
                assert float(artifact.data) < 100, "stage 2 ended before the browser saw it running"
                page.goto(f"{ui}/artifacts/artifact/{artifact.id}")
                expect(page.get_by_text(re.compile(r"Progress: \d+%"))).to_be_visible()
                percent = int(re.search(r"Progress: (\d+)%", page.content()).group(1))
                if 0 < percent < 100:
                    shown = percent
            expect(page.get_by_text(re.compile(r"step \d+ of 120, loss [\d.]+, [\d.]+ samples/s"))).to_be_visible()
            expect(page.get_by_text(re.compile(r"to go"))).to_be_visible()
            shots.take(page, "1-live-stage-progress")

            # 2. The retrain, named from its recipe, links to its promotion; the promotion links back.
            retraining.join(1200)
            assert not retraining.is_alive() and "error" not in outcome, outcome.get("error")
            first = outcome["first"]
            assert re.fullmatch(r"retrain-demo-\d{8}-\d{6}", first.run_name), first.run_name
            promotion_id = first.promotion
            (link,) = [a for a in _artifacts("promotion-run", since=started) if f"/runs/flow-run/{promotion_id}" in a.data]
            page.goto(f"{ui}/artifacts/artifact/{link.id}")
            to_promotion = page.get_by_role("link", name=f"promote-eve@{first.candidate_version}")
            expect(to_promotion).to_be_visible()
            assert to_promotion.get_attribute("href").endswith(f"/runs/flow-run/{promotion_id}")
            shots.take(page, "2-retrain-links-to-its-promotion")
            page.goto(to_promotion.get_attribute("href"))  # the UI opens external links in a new tab
            expect(page.get_by_text(f"promote-eve@{first.candidate_version}").first).to_be_visible()
            paused = _wait(lambda: (run := _flow_run(promotion_id)).state.is_paused() and run, "the promotion's pause", 300)
            (back,) = _artifacts("requested-by-run", promotion_id)
            page.goto(f"{ui}/artifacts/artifact/{back.id}")
            to_retrain = page.get_by_role("link", name=first.run_name)
            expect(to_retrain).to_be_visible()
            retrain_run = _flow_run(to_retrain.get_attribute("href").rsplit("/", 1)[-1])
            assert retrain_run.name == first.run_name
            shots.take(page, "3-promotion-links-back-to-the-retrain")

            # 3. The review form: the gate's rules with thresholds and verdicts, the baselines and the model
            # before SFT, contamination, sample images (rendered), both fields required, the deadline in days.
            dialog = open_review_form(page, ui, paused.id)
            expect(dialog.get_by_role("heading", name=f"Promote eve@{first.candidate_version} to production?")).to_be_visible()
            expect(dialog.get_by_role("heading", name="Evaluation gate").first).to_be_visible()
            for text in ("uniform chance", "most common answer", "before SFT", "pass ≥ 0", "Evaluation images in the "
                         "training data", "15 minutes", "Decide by"):
                expect(dialog.get_by_text(text).first).to_be_attached()
            expect(dialog.locator("li", has_text="threshold demo_vqa/accuracy").first).to_be_visible()
            expect(dialog.locator("li", has_text="most common answer").first).to_be_visible()
            images = dialog.locator("img[src^='data:image/png;base64,']")
            expect(images.first).to_be_visible()
            widths = images.evaluate_all("(images) => images.map((image) => image.naturalWidth)")
            assert widths and all(width > 0 for width in widths), widths
            expect(dialog.get_by_text("(Optional)")).to_have_count(0)
            shots.take(page, "4-review-form")
            to_top = "(element) => element.scrollIntoView({block: 'start'})"  # the section first in the dialog
            dialog.get_by_role("heading", name="Evaluation gate").first.evaluate(to_top)
            shots.take(page, "5-review-form-gate-rules-and-thresholds")
            dialog.get_by_role("heading", name="Scores against production").evaluate(to_top)
            shots.take(page, "6-review-form-scores-and-baselines")
            dialog.get_by_role("heading", name="Sample answers").evaluate(to_top)
            shots.take(page, "7-review-form-sample-images")
            decide_in_form(page, dialog, "approve", "Approved in the browser: above the baselines, no contamination")
            _wait(lambda: _flow_run(promotion_id).state.is_completed(), "the approved promotion to finish", 300)
    finally:
        stop_local_server()  # the worker this test started (no server of this home runs)

    for path in shots.taken:
        assert path.stat().st_size > 10_000, path

    registry = ModelRegistry.default()
    version = first.candidate_version
    assert registry.production_version() == version
    assignment = [e for e in registry.history() if e.event == "assignment"][-1]
    assert assignment.reviewer == "carol" and "browser" in assignment.comment
    trained = [s for s in first.stages if not s.skipped]
    assert [s.stage for s in first.stages] == ["base-llm", "1", "2", "3"] and len(trained) == 4
    # Each stage starts from its parent's output: the chain of checkpoint hashes is unbroken.
    for parent, child in zip(first.stages, first.stages[1:]):
        assert child.parent_weights_sha256 == parent.weights_sha256
    assert first.baselines["demo_vqa/accuracy"]["most common answer"] > 0
    assert "demo_vqa/accuracy" in first.before_sft_metrics

    lineage = read_lineage(registry.repo_dir, f"eve@{version}")
    assert [s.name for s in lineage.stages] == ["stage-base-llm", "stage-1", "stage-2", "stage-3"]
    assert lineage.stages[-1].weights_sha256 == first.stages[-1].weights_sha256
    for dataset in lineage.datasets:  # every dataset of the chain resolves to verified shards
        assert verify_dataset(dataset.location, dataset.dataset_hash).num_items == dataset.num_items
    assert lineage.quality is not None and lineage.quality.success
    # Stage 3 trained on the SFT mixture, derived from both the gated instruction data and the gated captions.
    by_role = {dataset.role: dataset for dataset in lineage.datasets}
    mixture = by_role["sft-mixture"]
    assert sorted(mixture.derived_from) == sorted([by_role["sft-filtered"].dataset_hash, by_role["filtered"].dataset_hash])
    assert lineage.stages[-1].input_dataset_hash == mixture.dataset_hash
    _check_openlineage_chain(first, lineage)
    _check_model_card(registry, first, lineage)
    _check_wandb(first, eve_home)
    _check_logs(first)

    second = retrain(_small_params(demo_dir, mode="skip"))
    assert [s.skipped for s in second.stages] == [True, True, True, True]
    assert [s.weights_sha256 for s in second.stages] == [s.weights_sha256 for s in first.stages]
    assert second.candidate_version == version  # same weights: no second registration
