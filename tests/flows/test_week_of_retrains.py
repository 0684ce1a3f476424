"""A platform team's week in one platform home (issue 23), on the real server, worker, registry and
audit log, with real (demo-sized, shortened) training:

- cycle 1: a retrain from a folder of images, approved by a reviewer: v0.1.0 in production;
- cycle 2: a new version of the dataset is ingested (another draw of the scene generator) and
  registered; the retrain takes the registered version by its tag, is compared with production
  and approved: v0.2.0;
- cycle 3: two candidates that regress, each blocked by the evaluation gate before any reviewer is
  asked, with the failing rule named: one on a secondary metric only (held-out perplexity) and one
  on the primary metric inside the old tolerance (VQA significantly below production, by less than
  the old rule's 0.05). So that the regression each rule must catch is exact, and not whatever a
  few hundred CPU steps happen to give, both are production's own weights with one known change,
  evaluated by the retrain's own evaluation subflow (``evaluate_candidate``, the step that decides
  whether a reviewer is asked): (a) the output layer scaled by 1/4, which leaves every greedy answer
  as it was (argmax is scale-free and a power-of-two scale is exact in fp32) and flattens every
  next-token distribution; (b) one answer word made unreachable (its output row swapped with that of
  a token no answer starts with): exactly the k questions production answered right with that word
  turn wrong, a paired drop of k/n with no question gained;
- a rollback to v0.1.0 through the approval path;
- each version's lineage is its own true chain (its own folder, by content hash), and
  ``eve audit verify`` passes.

The gate is the demo's (``demo_gate_policy``) except its absolute VQA floor, which a model trained
for a fraction of the demo's steps does not reach: this test is about the comparisons with
production, the floor has its own tests.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.flows.test_own_data import eve
from tests.tasks.lineage.test_source_lineage import _source_hash

pytestmark = pytest.mark.slow

VQA = "demo_vqa/accuracy"
LM_HEAD = "language_model.lm_head.weight"
OLD_TOLERANCE = 0.05
"""The rule before issue 23: block only when the whole CI of the delta is below -0.05."""


def _week_stages():
    """The demo recipe's stages, shortened to about a quarter (the demo's learning rates and batch)."""
    from eve_model.training.config import StageId
    from flows.recipes import demo

    preset = demo().training.stage_overrides
    steps = {StageId.BASE_LLM: 40, StageId.PREALIGN: 80, StageId.PRETRAIN: 150, StageId.SFT: 150}
    return {stage: preset[stage].model_copy(update={"max_steps": count}) for stage, count in steps.items()}


def _monday_and_wednesday(tmp_path: Path):
    """Two demo-sized datasets and one held-out set: one draw of the scene generator with twice the
    demo's training scenes, split in halves. The generator redraws every held-out scene that repeats a
    training scene, so neither half contains a scene of the held-out set (two separate draws would:
    a Wednesday scene one shape away from a held-out one is rightly refused by the gate's
    contamination check). Monday also gets the deliberately broken records, for the quarantine."""
    import shutil

    from tasks.data.demo_source import DemoDataConfig, demo_sources, generate_demo_data

    draw = generate_demo_data(tmp_path / "draw", DemoDataConfig(num_caption_scenes=1200, num_qa_train_conversations=1200))
    halves = {"monday": range(0, 600), "wednesday": range(600, 1200)}
    for day, scenes in halves.items():
        train = tmp_path / day / "demo" / "train"
        (train / "images").mkdir(parents=True)
        mine = {f"images/scene-{index:06d}.png" for index in scenes}
        for name in ("captions.jsonl", "conversations.jsonl"):
            records = [json.loads(line) for line in (draw / "train" / name).read_text().splitlines()]
            kept = [r for r in records if r["image"] in mine or (day == "monday" and not r["image"].startswith("images/scene-"))]
            (train / name).write_text("".join(json.dumps(r) + "\n" for r in kept))
            for record in kept:
                if (draw / "train" / record["image"]).exists():
                    shutil.copyfile(draw / "train" / record["image"], train / record["image"])
    shutil.copytree(draw / "eval", tmp_path / "monday" / "demo" / "eval")
    return demo_sources(tmp_path / "monday" / "demo"), demo_sources(tmp_path / "wednesday" / "demo")


def _week_params(sources, eval_questions_path: str):
    from flows.parameters import EvaluationParameters, PromotionParameters
    from flows.recipes import demo
    from tasks.evaluate.gates import demo_gate_policy
    from tasks.evaluate.harness import HarnessConfig

    params = demo()
    gate = demo_gate_policy()
    gate = gate.model_copy(update={"thresholds": [t.model_copy(update={"minimum": 0.0}) for t in gate.thresholds]})
    data = {"use_demo_source": False, "curate": False, "dataset_name": "scenes", "sources": sources.captions,
            "sft_sources": sources.sft}
    return params.model_copy(update={
        "data": params.data.model_copy(update=data),
        "training": params.training.model_copy(update={"stage_overrides": _week_stages()}),
        # The same held-out set every cycle: the gate compares candidate and production question by question.
        "evaluation": EvaluationParameters(harness=HarnessConfig(batch_size=8, max_new_tokens=4, show_progress=False),
                                           gate=gate, eval_questions_path=eval_questions_path),
        "promotion": PromotionParameters(mode="detached"),
    })


def _flow_run(run_id):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def _wait(predicate, what: str, timeout_seconds: float):
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {timeout_seconds} s")


def _approve(api_url: str, reviewer_auth: str, promotion_run_id: str, comment: str) -> None:
    from tests.fixtures.promotion_runs import submit_decision

    paused = _wait(lambda: (run := _flow_run(promotion_run_id)).state.is_paused() and run, "the promotion's pause", 300)
    answer = submit_decision(api_url, reviewer_auth, paused.id, {"decision": "approve", "comment": comment})
    assert answer["status_code"] in (200, 201) and answer["status"] == "ACCEPT", answer
    done = _wait(lambda: (run := _flow_run(promotion_run_id)).state.is_final() and run, "the promotion's end", 300)
    assert done.state.is_completed(), done.state.message


def _promotion_runs() -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["promote-eve"])))


def _check_true_chain(version: str, sources, also_not: Path) -> None:
    """``eve lineage`` of ``version``: its raw sources are its own folder's files by content hash, every
    derived dataset names its real parents, and the other cycle's folder appears nowhere."""
    code, output = eve("lineage", f"eve@{version}", "--format", "json")
    assert code == 0, output
    manifest = json.loads(output)
    by_role = {d["role"]: d for d in manifest["raw_sources"] + manifest["datasets"]}
    raw, raw_sft = by_role["raw"], by_role["raw-sft"]
    assert raw["location"] == f"{sources.captions[0].location} ({sources.captions[0].records_file})"
    assert raw_sft["location"] == f"{sources.sft[0].location} ({sources.sft[0].records_file})"
    assert raw["dataset_hash"] == _source_hash(sources.captions[0])
    assert raw_sft["dataset_hash"] == _source_hash(sources.sft[0])
    parents = {
        "ingested": [raw["dataset_hash"]],
        "captioned": [by_role["ingested"]["dataset_hash"]],
        "filtered": [by_role["captioned"]["dataset_hash"]],
        "sft": [raw_sft["dataset_hash"]],
        "sft-filtered": [by_role["sft"]["dataset_hash"]],
        "sft-mixture": sorted([by_role["sft-filtered"]["dataset_hash"], by_role["filtered"]["dataset_hash"]]),
    }
    for role, expected in parents.items():
        assert sorted(by_role[role]["derived_from"]) == expected, (version, role)
    assert manifest["stages"][-1]["input_dataset_hash"] == by_role["sft-mixture"]["dataset_hash"]
    code, text = eve("lineage", f"eve@{version}")
    assert code == 0 and sources.captions[0].location in text and str(also_not) not in text, text


def _blocked(evaluate, rule_text: str):
    """``evaluate`` must fail at the evaluation gate naming ``rule_text``, before anything is registered
    and before any promotion run (a reviewer's request) exists. Returns the gate's whole decision."""
    from tasks.evaluate.gates import GateDecision
    from tasks.evaluate.prefect_tasks import EvaluationGateFailed
    from tasks.registry import ModelRegistry

    registered_before = [v.version for v in ModelRegistry.default().show()]
    promotions_before = len(_promotion_runs())
    with pytest.raises(EvaluationGateFailed) as failure:
        evaluate()
    message = str(failure.value)
    assert rule_text in message, message
    assert [v.version for v in ModelRegistry.default().show()] == registered_before  # nothing registered
    assert len(_promotion_runs()) == promotions_before  # no reviewer was asked
    kept = message.rsplit("(the whole decision: ", 1)[1].rstrip(")")  # the failed gate keeps its decision
    return GateDecision.model_validate_json(Path(kept).read_text())


def _crafted(production_dir: Path, target: Path, change) -> Path:
    """A copy of the production model whose output layer is ``change(lm_head weight)``."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(production_dir, target)
    weights = load_file(target / "model.safetensors")
    weights[LM_HEAD] = change(weights[LM_HEAD]).contiguous()
    save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


def _as_candidate(trained, model_dir: Path):
    """The stage-3 result of cycle 2 with ``model_dir`` as its final model."""
    from eve_model.identity import weights_sha256

    return trained.model_copy(update={"model_dir": str(model_dir), "output_dir": str(model_dir.parent),
                                      "weights_sha256": weights_sha256(model_dir)})


def _report_of(model_dir: Path):
    """The evaluation report the week's gates read for ``model_dir`` (cached by content)."""
    from eve_model.identity import weights_sha256
    from tasks.evaluate.report import EvaluationReport
    from tasks.platform import PlatformSettings

    path = PlatformSettings.load().home / "evaluations" / weights_sha256(model_dir)[:16] / "report.json"
    return EvaluationReport.load(path)


def _answer_word_to_remove(model_dir: Path, report) -> tuple[str, list[tuple[int, int]], int]:
    """(word, row swaps, questions lost): an answer word that production got right between 5 and 14
    times (closest to 8) and that one token spells; each token spelling it (with or without the
    leading space) paired with a letter token that production never produces and no answer starts
    with; and how many of production's right answers contain one of those tokens (all of them turn
    wrong; no wrong answer turns right)."""
    from collections import Counter

    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))
    vocabulary = tokenizer.get_vocab()
    samples = report.suites["demo_vqa"].samples

    def tokens_of(text: str) -> set[int]:
        return set(tokenizer.encode(text, add_special_tokens=False)) | set(tokenizer.encode(" " + text, add_special_tokens=False))

    def spelling(word: str) -> list[int]:
        return sorted(t for t in vocabulary.values() if tokenizer.decode([t]).strip() == word)

    right = Counter(s.prediction for s in samples if s.scores["accuracy"] == 1.0)
    losses = {word: sum(1 for s in samples if s.scores["accuracy"] == 1.0 and tokens_of(s.prediction) & set(spelling(word)))
              for word in right if spelling(word)}
    fitting = {word: lost for word, lost in losses.items() if 5 <= lost <= 14}
    assert fitting, f"no one-token answer word that production got right 5-14 times: {right}"
    word = min(fitting, key=lambda w: (abs(fitting[w] - 8), w))
    spelled = spelling(word)
    texts = [text for s in samples for text in [s.prediction, *s.references]]
    used = set().union(*(tokens_of(text) for text in texts))
    starts = {text.strip()[:1] for text in texts if text.strip()}
    unused = sorted(t for t in vocabulary.values() if t not in used and (text := tokenizer.decode([t]).strip())
                    and text[0].isalpha() and text[0] not in starts)
    assert len(unused) >= len(spelled), "no unused tokens to swap with"
    return word, list(zip(spelled, unused)), fitting[word]


def test_a_week_new_data_version_approved_regressions_blocked_rollback_and_true_lineage(
    prefect_server, prefect_accounts, eve_home, tmp_path, monkeypatch
):
    from flows.data_flow import DataFlowParams, data_pipeline
    from flows.deployments import apply_deployments
    from flows.retrain_flow import data_only, evaluate_candidate, retrain
    from tasks.data.versioning import DatasetRegistry
    from tasks.orchestration import ensure_worker, stop_local_server
    from tasks.platform import PlatformSettings
    from tasks.registry import ModelRegistry, checkout_production
    from tests.fixtures.promotion_runs import eve_as, use_policy

    monday, wednesday = _monday_and_wednesday(tmp_path)
    wednesday_dir = Path(wednesday.captions[0].location).parent
    held_out = monday.eval_questions_path
    use_policy(reviewers=("carol",), timeout_seconds=1800)
    carol = prefect_accounts.auth("carol")
    alice = prefect_accounts.auth("alice")
    ensure_worker(PlatformSettings.load(), auth_string=prefect_accounts.auth("eve-worker", kind="worker"))
    registry = ModelRegistry.default()
    try:
        apply_deployments(["promote"])

        # Cycle 1: the first retrain, approved.
        first = retrain(_week_params(monday, held_out))
        assert first.candidate_version == "v0.1.0"
        _approve(prefect_server, carol, first.promotion, "first model of the week")
        assert registry.production_version() == "v0.1.0"

        # Cycle 2: a new dataset version arrives; the retrain takes it by tag and is compared with production.
        arrived = data_pipeline(DataFlowParams(dataset_name="scenes", sources=wednesday.captions, curate=False),
                                registered_by="ingest")
        versions = {v.dataset_hash: v for v in DatasetRegistry.from_settings().list_versions("scenes-raw")}
        assert len(versions) == 2  # Monday's and the new one: two versions of one dataset
        new_version = versions[arrived.raw_version.dataset_hash]
        second = retrain(_week_params(wednesday, held_out), dataset=new_version.tag)
        assert second.candidate_version == "v0.2.0"
        compared = {c.rule for c in second.evaluation.gate.checks if c.production is not None}
        assert {"non_regression", "retention"} <= compared, second.evaluation.gate.checks
        assert second.evaluation.gate.production_weights_sha256 == first.stages[-1].weights_sha256
        _approve(prefect_server, carol, second.promotion, "new data, no regression")
        assert registry.production_version() == "v0.2.0"

        # Cycle 3: two regressed candidates, judged by the retrain's own evaluation subflow against v0.2.0.
        cycle_two = _week_params(wednesday, held_out)
        prepared = data_only(cycle_two, dataset=new_version.tag)  # every step cached from cycle 2
        production_dir = Path(checkout_production()[1])
        production_report = _report_of(production_dir)

        flattened = _crafted(production_dir, tmp_path / "flattened", lambda head: head * 0.25)
        decision = _blocked(lambda: evaluate_candidate(cycle_two, prepared, _as_candidate(second.stages[-1], flattened)),
                            "retention heldout_text/perplexity")
        assert {(c.rule, c.metric) for c in decision.failures} == {("retention", "heldout_text/perplexity")}, \
            decision.to_markdown()
        (overall,) = [c for c in decision.checks if c.rule == "non_regression" and c.metric == VQA]
        assert overall.passed and overall.delta == 0.0  # the same answers, question by question
        (retention,) = decision.failures
        assert retention.delta > retention.limit == 2.0

        word, swaps, lost = _answer_word_to_remove(production_dir, production_report)

        def swap(head):
            head = head.clone()
            for token, unused in swaps:
                head[[token, unused]] = head[[unused, token]]
            return head

        silenced = _crafted(production_dir, tmp_path / "silenced", swap)
        decision = _blocked(lambda: evaluate_candidate(cycle_two, prepared, _as_candidate(second.stages[-1], silenced)),
                            f"non_regression {VQA}")
        (overall,) = [c for c in decision.checks if c.rule == "non_regression" and c.metric == VQA]
        assert not overall.passed and overall.delta == pytest.approx(-lost / overall.num_samples), decision.to_markdown()
        assert overall.ci_high < 0, "the drop is significant: the CI's high end is below 0"
        assert overall.ci_high > -OLD_TOLERANCE, "inside the old tolerance: the old rule would have passed it"
        # (When the silenced word also occurs in the held-out text, e.g. a colour, perplexity may rise
        # past its limit as well; the regression this cycle is about is the primary metric's.)
        assert registry.production_version() == "v0.2.0"

        # The rollback: alice asks for v0.1.0 back, carol approves it; production moves through the same path.
        asked = {r.id for r in _promotion_runs()}
        code, out, err = eve_as(monkeypatch, alice, "promote", "request", "v0.1.0", "--user", "alice")
        assert code == 0, out + err
        rollback = _wait(lambda: next((r for r in _promotion_runs() if r.id not in asked
                                       and r.name == "promote-eve@v0.1.0" and r.state.is_paused()), None),
                         "the rollback's pause", 300)
        _approve(prefect_server, carol, rollback.id, "back to Monday's model")
        assert registry.production_version() == "v0.1.0"
        last = [e for e in registry.history() if e.event == "assignment"][-1]
        assert (last.version, last.kind, last.reviewer) == ("v0.1.0", "rollback", "carol")
    finally:
        stop_local_server()  # the worker this test started

    _check_true_chain("v0.1.0", monday, also_not=wednesday_dir)
    _check_true_chain("v0.2.0", wednesday, also_not=Path(monday.captions[0].location).parent)
    code, output = eve("lineage", "--dataset", new_version.tag)  # the new version: used by v0.2.0 only
    assert code == 0 and [line.split(":")[0] for line in output.splitlines()] == ["eve@v0.2.0"], output
    assert "ingested" in output, output
    code, output = eve("audit", "verify")
    assert code == 0, output
