"""GTO registry with DVC-tracked weights: gate-only registration, approval-only production, signed tags,
rollback, pull-back, races."""

from __future__ import annotations

import multiprocessing
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from eve_model.shards import verify_dataset
from tasks import audit
from tasks.lineage.schema import ApprovalRecord
from tasks.platform import PlatformSettings
from eve_model.identity import weights_sha256
from tasks.registry import ApprovalRequiredError, GateNotPassedError, ModelRegistry, RegistryError
from tests.fixtures.model_registry import authorised_approvals, passing_gate


def _audited_approval(registry: ModelRegistry, version: str, reviewer: str = "bob") -> ApprovalRecord:
    """What the approval path produces: a recorded request and an accepted, signed decision."""
    return authorised_approvals(registry, version, reviewers=(reviewer,))[0]


def test_registration_requires_a_passing_gate(eve_home, registry_inputs):
    registry = ModelRegistry(PlatformSettings.load())
    weights, lineage = registry_inputs(1)
    with pytest.raises(GateNotPassedError):
        registry.register_candidate(weights, lineage, passing_gate(passed=False))
    assert registry.show() == []


def test_the_evaluation_gates_decision_is_honoured_through_the_task(eve_home, registry_inputs):
    from tasks.evaluate.gates import GateDecision, GatePolicy
    from tasks.registry import register_candidate

    weights, lineage = registry_inputs(1)
    failed = GateDecision(passed=False, checks=[], policy=GatePolicy(), candidate_weights_sha256="c" * 64)
    with pytest.raises(GateNotPassedError):
        register_candidate.fn(str(weights), lineage, failed)
    assert ModelRegistry(PlatformSettings.load()).show() == []
    assert register_candidate.fn(str(weights), lineage, failed.model_copy(update={"passed": True})) == "v0.1.0"


def test_every_hash_in_the_lineage_resolves_and_pulls_back(eve_home, registry_inputs, tmp_path):
    registry = ModelRegistry(PlatformSettings.load())
    weights, lineage = registry_inputs(1)
    version = registry.register_candidate(weights, lineage, passing_gate())
    assert version == "v0.1.0"
    stored = registry.lineage(version)
    assert stored.version == version and stored.weights.sha256 == weights_sha256(weights)
    committed = subprocess.run(
        ["git", "show", f"eve@{version}:lineage/eve/{version}.json"],
        cwd=registry.repo_dir,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert stored.model_validate_json(committed).weights == stored.weights

    for dataset in stored.all_datasets():
        assert verify_dataset(dataset.location, expected_hash=dataset.dataset_hash).num_items == dataset.num_items
    dataset_hashes = {d.dataset_hash for d in stored.all_datasets()}
    assert {s.input_dataset_hash for s in stored.stages} <= dataset_hashes
    assert stored.caption.output_dataset_hash in dataset_hashes
    assert stored.quality.dataset_hash in dataset_hashes

    # Drop the registry's own DVC cache so the weights must come back from the remote.
    shutil.rmtree(registry.repo_dir / ".dvc" / "cache")
    shutil.rmtree(registry.repo_dir / "models" / "eve")
    pulled = registry.pull_version(version, tmp_path / "pulled")
    assert weights_sha256(pulled) == stored.weights.sha256
    assert (pulled / "model.safetensors").read_bytes() == (weights / "model.safetensors").read_bytes()


def test_production_moves_only_with_an_audited_approval(eve_home, registry_inputs):
    registry = ModelRegistry(PlatformSettings.load())
    version = registry.register_candidate(*registry_inputs(1), passing_gate())
    approval = _audited_approval(registry, version)
    forged = approval.model_copy(update={"audit_record_hash": "f" * 64})
    with pytest.raises(ApprovalRequiredError, match="no accepted review decision"):
        registry.assign_production(version, forged)
    with pytest.raises(ApprovalRequiredError, match="differs"):  # altered after the audit record was written
        registry.assign_production(version, approval.model_copy(update={"comment": "edited"}))
    assert registry.production_version() is None

    tag = registry.assign_production(version, approval)
    assert tag.startswith("eve#production")
    assert registry.production_version() == version
    assignment = [e for e in registry.history() if e.event == "assignment"][-1]
    assert (assignment.reviewer, assignment.comment, assignment.evidence_sha256) == ("bob", approval.comment, "a" * 64)
    assert assignment.audit_record_hash == approval.audit_record_hash and assignment.kind == "promotion"
    assert registry.lineage(version).approvals == [approval]
    assert [r.event for r in registry.audit_log.records()][-2:] == [audit.ASSIGNMENT_INTENT, audit.PRODUCTION_ASSIGNED]
    assert registry.audit_log.verify().ok


def test_every_registry_tag_is_signed_and_git_itself_verifies_it(eve_home, registry_inputs, tmp_path):
    registry = ModelRegistry(PlatformSettings.load())
    version = registry.register_candidate(*registry_inputs(1), passing_gate())
    registry.assign_production(version, _audited_approval(registry, version))
    tags = registry.tags()
    assert {t.name for t in tags} >= {"eve@v0.1.0", "eve#production#1"}
    assert any(t.name.startswith("eve-audit/anchor-") for t in tags)
    assert all(t.annotated and t.signed_by for t in tags)
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(registry.keyring.allowed_signers("platform"))
    for name in ("eve@v0.1.0", "eve#production#1"):
        checked = subprocess.run(
            ["git", "-c", f"gpg.ssh.allowedSignersFile={allowed}", "tag", "-v", name],
            cwd=registry.repo_dir, capture_output=True, text=True,
        )
        assert checked.returncode == 0 and 'Good "git" signature for eve-platform' in checked.stderr, checked.stderr


def test_a_rollback_goes_through_approvals_and_is_recorded_as_one(eve_home, registry_inputs):
    registry = ModelRegistry(PlatformSettings.load())
    first = registry.register_candidate(*registry_inputs(1), passing_gate())
    second = registry.register_candidate(*registry_inputs(2), passing_gate())
    registry.assign_production(first, _audited_approval(registry, first))
    registry.assign_production(second, _audited_approval(registry, second, reviewer="carol"))
    assert registry.production_version() == second
    with pytest.raises(ApprovalRequiredError):  # no approval, no rollback either
        registry.assign_production(first, [])
    rollback = authorised_approvals(registry, first, reviewers=("dave",))
    registry.assign_production(first, rollback)
    assert registry.production_version() == first
    moves = [(e.version, e.kind) for e in registry.history() if e.event == "assignment"]
    assert moves == [(first, "promotion"), (second, "promotion"), (first, "rollback")]
    request = next(r for r in reversed(registry.audit_log.records()) if r.event == audit.PROMOTION_REQUESTED)
    assert request.payload["request"]["kind"] == "rollback"
    assert registry.audit_log.records()[-1].payload["kind"] == "rollback"


def test_a_rewritten_audit_log_is_caught_by_the_registry_anchors(eve_home, registry_inputs):
    from tasks.verification import verify_platform

    registry = ModelRegistry(PlatformSettings.load())
    version = registry.register_candidate(*registry_inputs(1), passing_gate())
    registry.assign_production(version, _audited_approval(registry, version))
    assert verify_platform().ok

    # Rebuild a whole new, internally consistent and even signed log without the decision: the
    # chain alone cannot tell, the anchors in the registry can.
    kept = [r for r in registry.audit_log.records() if r.event != audit.REVIEW_DECISION_ACCEPTED]
    registry.audit_log.path.unlink()
    registry.audit_log.head_path.unlink()
    for record in kept:
        registry.audit_log.append(record.event, actor=record.actor, subject=record.subject, payload=record.payload)
    assert registry.audit_log.verify().ok
    report = verify_platform()
    assert not report.ok and "anchor" in report.problems[0] and "rewritten" in report.problems[0]


@pytest.mark.slow
def test_weights_go_to_the_s3_data_remote_and_pull_back(eve_home, registry_inputs, s3_env, monkeypatch, tmp_path):
    monkeypatch.setenv("EVE_DVC_REMOTE", f"s3://{s3_env.bucket}/registry-{tmp_path.name}")
    registry = ModelRegistry(PlatformSettings.load())
    weights, lineage = registry_inputs(1)
    version = registry.register_candidate(weights, lineage, passing_gate())
    config = (registry.repo_dir / ".dvc" / "config").read_text()
    assert s3_env.endpoint_url in config
    assert s3_env.secret_key not in config and s3_env.access_key not in config
    shutil.rmtree(registry.repo_dir / ".dvc" / "cache")
    pulled = registry.pull_version(version, tmp_path / "pulled")
    assert weights_sha256(pulled) == weights_sha256(weights)


def _register_in_subprocess(home: str, weights: str, lineage_json: str, queue) -> None:
    import os

    os.environ["EVE_HOME"] = home
    from tasks.lineage.schema import LineageManifest
    from tasks.registry import ModelRegistry

    registry = ModelRegistry()
    queue.put(
        registry.register_candidate(Path(weights), LineageManifest.model_validate_json(lineage_json), passing_gate())
    )


@pytest.mark.slow
def test_racing_writers_are_serialised(eve_home, registry_inputs):
    registry = ModelRegistry(PlatformSettings.load())
    registry.ensure_initialized()
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes = []
    for seed in (1, 2):
        weights, lineage = registry_inputs(seed)
        processes.append(
            context.Process(
                target=_register_in_subprocess, args=(str(eve_home), str(weights), lineage.model_dump_json(), queue)
            )
        )
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    # Without the lock both writers would compute the same next version and one tag would fail.
    assert sorted(queue.get(timeout=5) for _ in processes) == ["v0.1.0", "v0.2.0"]
    assert sorted(v.version for v in registry.show()) == ["v0.1.0", "v0.2.0"]

    approvals = {v: _audited_approval(registry, v, reviewer=f"r-{v.replace('.', '-')}") for v in ("v0.1.0", "v0.2.0")}
    threads = [threading.Thread(target=registry.assign_production, args=(v, a)) for v, a in approvals.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assignments = [e for e in registry.history() if e.event == "assignment"]
    assert len(assignments) == 2
    # Serialised writes land in distinct seconds, so GTO's "latest assignment wins" is well defined.
    assert assignments[0].timestamp < assignments[1].timestamp
    assert registry.production_version() == assignments[-1].version
    assert registry.audit_log.verify().ok


def test_remote_registry_receives_commits_and_tags(eve_home, registry_inputs, tmp_path, monkeypatch):
    remote = tmp_path / "registry-remote.git"
    subprocess.run(["git", "init", "--quiet", "--bare", "-b", "main", str(remote)], check=True)
    monkeypatch.setenv("EVE_REGISTRY_URL", str(remote))
    registry = ModelRegistry(PlatformSettings.load())
    version = registry.register_candidate(*registry_inputs(1), passing_gate())
    registry.assign_production(version, _audited_approval(registry, version))
    remote_tags = subprocess.run(
        ["git", "ls-remote", "--tags", str(remote)], capture_output=True, text=True, check=True
    ).stdout
    assert f"refs/tags/eve@{version}" in remote_tags
    assert "refs/tags/eve#production#" in remote_tags
    # A fresh clone sees the same registry state through GTO.
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(remote), str(clone)], check=True)
    from gto import api

    assert [v.version for v in api.find_versions_in_stage(str(clone), "eve", "production")] == [version]

    # A local tag rewritten by hand no longer agrees with the remote's: verify says so.
    from tasks.verification import verify_platform

    assert verify_platform().ok
    subprocess.run(["git", "tag", "-f", "-a", "eve#production#1", "-m", "moved", "HEAD"], cwd=registry.repo_dir,
                   check=True, capture_output=True)
    report = verify_platform()
    assert any("differs from the remote" in problem and "eve#production#1" in problem for problem in report.problems)


def test_an_unreachable_registry_remote_fails_clearly_without_leaking_credentials(eve_home, monkeypatch):
    monkeypatch.setenv("EVE_REGISTRY_URL", "https://reviewer:s3cr3t-token@127.0.0.1:9/registry.git")
    with pytest.raises(RegistryError, match="git clone") as failure:
        ModelRegistry(PlatformSettings.load()).ensure_initialized()
    assert "s3cr3t-token" not in str(failure.value)


def test_the_model_card_is_in_the_registered_checkpoint_and_follows_the_approval(eve_home, registry_inputs, tmp_path):
    from cli.main import main as eve
    from tasks.registry_card import ModelCardFacts, read_model_card_sections

    registry = ModelRegistry(PlatformSettings.load())
    weights, lineage = registry_inputs(1)
    facts = ModelCardFacts(recipe_name="demo", run_name="retrain-demo-x", production_metrics={"vqa_accuracy": 0.4},
                           baselines={"vqa_accuracy": {"chance": 0.1, "most common answer": 0.3}})
    version = registry.register_candidate(weights, lineage, passing_gate(), facts)
    stored = registry.lineage(version)

    # In the checkpoint itself, DVC-tracked with the weights, and outside their hash.
    pulled = registry.pull_version(version, tmp_path / "pulled")
    for checkpoint in (registry.repo_dir / "models" / "eve", pulled):
        sections = read_model_card_sections(checkpoint)
        assert {"Intended use", "Training data", "Training procedure", "Evaluation", "Limitations", "Approval"} <= set(sections)
        assert all(d.dataset_hash in sections["Training data"] for d in stored.all_datasets())
        assert "demo" in sections["Training procedure"] and "retrain-demo-x" in sections["Training procedure"]
        assert "0.3" in sections["Evaluation"] and "most common answer" in sections["Evaluation"]
        assert "not approved" in sections["Approval"]
        assert weights_sha256(checkpoint) == stored.weights.sha256
    assert not (weights / "README.md").exists()  # the candidate's own directory is left as it was

    approval = _audited_approval(registry, version)
    registry.assign_production(version, approval)
    card = registry.model_card(version)
    approved = card.split("## Approval", 1)[1]
    assert "bob" in approved and approval.comment in approved and approval.decided_at in approved
    assert f"production_since: '{approval.decided_at}'" in card or f"production_since: {approval.decided_at}" in card
    committed = subprocess.run(["git", "show", f"HEAD:cards/eve/{version}/README.md"], cwd=registry.repo_dir,
                               capture_output=True, text=True, check=True).stdout
    assert committed == card
    # Pulled later, a checkpoint carries the card as the approval left it.
    assert "bob" in (registry.pull_version(version, tmp_path / "again") / "README.md").read_text()

    # ``eve registry show VERSION`` prints it; an unknown version is one line, exit 1.
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert eve(["registry", "show", f"eve@{version}"]) == 0
    assert out.getvalue() == card
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert eve(["registry", "show", "v9.9.9"]) == 1
    assert "not registered" in err.getvalue() and "Traceback" not in err.getvalue()
