"""Every attack of issue 14 on the promotion record, tried as an attacker would: each either fails to
move production or is reported by ``eve audit verify`` with a non-zero exit naming the broken link.

The attacker here can run the platform's Python and git in the platform home, but does not use the
private keys (docs/security.md: whoever reads the key files is the operator)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.main import main as eve
from tasks import audit
from tasks.lineage.schema import ApprovalRecord
from tasks.platform import PlatformSettings
from tasks.registry import ApprovalRequiredError, ModelRegistry
from tasks.verification import verify_platform
from tests.fixtures.model_registry import authorised_approvals, passing_gate, verify_fails


@pytest.fixture
def registry(eve_home, registry_inputs) -> ModelRegistry:
    """v0.1.0 in production through the approval path; v0.2.0 registered, not approved."""
    registry = ModelRegistry(PlatformSettings.load())
    first = registry.register_candidate(*registry_inputs(1), passing_gate())
    registry.assign_production(first, authorised_approvals(registry, first, reviewers=("carol",)))
    registry.register_candidate(*registry_inputs(2), passing_gate())
    assert verify_platform().ok
    return registry


def _git(registry: ModelRegistry, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=registry.repo_dir, check=True, capture_output=True, text=True).stdout


# ---------------------------------------------------------------- forged and replayed approvals


def test_a_hand_appended_accepted_record_moves_nothing_and_verify_names_it(registry, capsys):
    """The public audit API appends an 'accepted' decision with reviewer == requester, an empty comment
    and no flow run; the production assignment refuses it; verify reports the record."""
    approval = ApprovalRecord(
        version="v0.2.0", decision="approve", reviewer="alice", comment="", decided_at="2026-01-01T00:00:00+00:00",
        evidence_sha256="0" * 64, requested_by="alice",
    )
    record = registry.audit_log.append(
        audit.REVIEW_DECISION_ACCEPTED, actor="alice", subject="eve@v0.2.0", payload={"approval": approval.model_dump()}
    )
    forged = approval.model_copy(update={"audit_record_hash": record.record_hash})
    with pytest.raises(ApprovalRequiredError, match="no signed decision"):
        registry.assign_production("v0.2.0", forged)
    assert registry.production_version() == "v0.1.0"
    verify_fails(capsys, f"seq {record.seq}", "not a decision the platform accepted")


def test_a_copied_signed_decision_cannot_be_replayed(registry, capsys):
    """A real, signed decision copied into a new record (same payload) after it was used."""
    approval = authorised_approvals(registry, "v0.2.0")[0]
    registry.assign_production("v0.2.0", approval)
    original = registry.audit_log.find(approval.audit_record_hash)
    copy = registry.audit_log.append(original.event, actor=original.actor, subject=original.subject,
                                     payload=original.payload)
    registry.assign_production("v0.1.0", authorised_approvals(registry, "v0.1.0", reviewers=("dave",)))
    with pytest.raises(ApprovalRequiredError, match="already used"):
        registry.assign_production("v0.2.0", approval.model_copy(update={"audit_record_hash": copy.record_hash}))
    with pytest.raises(ApprovalRequiredError, match="moves production once"):  # the original, again
        registry.assign_production("v0.2.0", approval)
    assert registry.production_version() == "v0.1.0"


def test_a_decision_for_one_version_or_run_does_not_move_another(registry):
    approval = authorised_approvals(registry, "v0.2.0")[0]
    with pytest.raises(ApprovalRequiredError, match="does not approve v0.1.0"):
        registry.assign_production("v0.1.0", approval)
    relabelled = approval.model_copy(update={"version": "v0.1.0"})
    with pytest.raises(ApprovalRequiredError, match="differs"):
        registry.assign_production("v0.1.0", relabelled)
    other_run = approval.model_copy(update={"flow_run_id": "00000000-0000-0000-0000-000000000000"})
    with pytest.raises(ApprovalRequiredError, match="differs"):
        registry.assign_production("v0.2.0", other_run)
    assert registry.production_version() == "v0.1.0"


def test_an_expired_decision_does_not_move_production(registry):
    from tasks.policy import ReviewRule

    rule = ReviewRule(allowed_reviewers=["bob"], decision_validity_seconds=1)
    approval = authorised_approvals(registry, "v0.2.0", rule=rule)[0]
    time.sleep(1.5)
    with pytest.raises(ApprovalRequiredError, match="expired"):
        registry.assign_production("v0.2.0", approval)
    assert registry.production_version() == "v0.1.0"


def test_a_rejected_promotion_cannot_be_assigned_with_an_earlier_approval(registry):
    from tasks.approvals import judge_submission, record_verdict, used_nonces
    from tasks.accounts import Account
    from tasks.approvals import RecordedRequest
    from tasks.gateway import issue_submission_claim
    from tasks.policy import ReviewRule

    rule = ReviewRule(allowed_reviewers=["bob", "carol"], required_approvals=1)
    approval = authorised_approvals(registry, "v0.2.0", rule=rule)[0]
    request_record = next(r for r in reversed(registry.audit_log.records()) if r.event == audit.PROMOTION_REQUESTED)
    request = RecordedRequest.model_validate(request_record.payload["request"])
    carol = Account(name="carol", kind="user", password_bcrypt="-", created_at="-")
    submitted = issue_submission_claim({"decision": "reject", "comment": "no"}, carol, request.flow_run_id,
                                       registry.keyring)
    verdict = judge_submission(submitted, request, [], used_nonces(registry.audit_log.records()), registry.keyring)
    record_verdict(verdict, request, submitted, registry.audit_log)
    with pytest.raises(ApprovalRequiredError, match="rejected by carol"):
        registry.assign_production("v0.2.0", approval)


# ---------------------------------------------------------------- registry tags edited by hand


def test_a_new_production_tag_reusing_an_old_message_is_reported(registry, capsys):
    old = next(t for t in registry.tags() if t.name == "eve#production#1")
    # Production to v0.2.0 first, then back to v0.1.0 by hand with the old approval's message.
    registry.assign_production("v0.2.0", authorised_approvals(registry, "v0.2.0"))
    _git(registry, "-c", "user.name=mallory", "-c", "user.email=m@x", "tag", "-a", "eve#production#9", old.target,
         "-m", old.message)
    assert registry.production_version() == "v0.1.0"  # the attack moved production...
    verify_fails(capsys, "eve#production#9", "not signed")  # ...and verify names it


def test_a_gto_deprecation_of_the_production_version_is_reported(registry, capsys):
    registry.assign_production("v0.2.0", authorised_approvals(registry, "v0.2.0"))
    gto = Path(sys.executable).with_name("gto")
    subprocess.run([str(gto), "deprecate", "eve", "v0.2.0", "production"], cwd=registry.repo_dir, check=True,
                   capture_output=True)
    assert registry.production_version() == "v0.1.0"
    verify_fails(capsys, "eve#production!", "not signed")


def test_deleting_the_current_assignment_tag_is_reported(registry, capsys):
    registry.assign_production("v0.2.0", authorised_approvals(registry, "v0.2.0"))
    _git(registry, "tag", "-d", "eve#production#2")
    assert registry.production_version() == "v0.1.0"
    verify_fails(capsys, "eve#production#2", "no longer has")


# ---------------------------------------------------------------- the audit log rewritten


def test_a_cut_log_with_an_old_signed_head_put_back_is_caught_by_the_anchor(registry, capsys):
    head_before = registry.audit_log.head_path.read_text()
    lines_before = len(registry.audit_log.path.read_text().splitlines())
    registry.assign_production("v0.2.0", authorised_approvals(registry, "v0.2.0"))
    # Cut the log back to what it was and put the old (validly signed) head back.
    lines = registry.audit_log.path.read_text().splitlines()[:lines_before]
    registry.audit_log.path.write_text("".join(line + "\n" for line in lines))
    registry.audit_log.head_path.write_text(head_before)
    assert registry.audit_log.verify().ok  # the log alone looks fine
    verify_fails(capsys, "anchor", "cut")


def test_a_torn_line_never_crashes_show_or_verify_and_repair_keeps_the_evidence(registry, capsys):
    with open(registry.audit_log.path, "a") as handle:
        handle.write('{"seq": 99, "event": "registry.produ')
    assert eve(["audit", "show", "--last", "2"]) == 0
    assert "torn last line" in capsys.readouterr().out
    verify_fails(capsys, "torn last line", "eve audit repair")
    with pytest.raises(audit.AuditIntegrityError):  # no promotion seals over it
        registry.audit_log.append("review.decision_accepted", actor="mallory")
    assert eve(["audit", "repair", "--by", "ops"]) == 0
    out = capsys.readouterr().out
    assert "aside" in out and "anchored" in out
    assert eve(["audit", "verify"]) == 0, capsys.readouterr().out
    registry.assign_production("v0.2.0", authorised_approvals(registry, "v0.2.0"))
    assert registry.production_version() == "v0.2.0" and verify_platform().ok


def test_lineage_approvals_must_be_decisions_of_the_log(registry, capsys):
    from tasks.lineage.store import read_lineage, write_lineage

    manifest = read_lineage(registry.repo_dir, "eve@v0.1.0")
    forged = manifest.approvals[0].model_copy(update={"reviewer": "mallory", "comment": "me too"})
    write_lineage(registry.repo_dir, manifest.model_copy(update={"approvals": [*manifest.approvals, forged]}))
    verify_fails(capsys, "lineage of eve@v0.1.0", "mallory")


def test_a_hand_edited_policy_file_stops_promotions(eve_home):
    from tasks.policy import PolicyError, PromotionPolicy, ReviewRule, load_policy, save_policy

    save_policy(PromotionPolicy(models={"eve": ReviewRule(allowed_reviewers=["bob"])}), updated_by="ops")
    assert load_policy().rule_for("eve").allowed_reviewers == ["bob"]
    path = PlatformSettings.load().policy_path
    document = json.loads(path.read_text())
    document["policy"]["models"]["eve"]["allowed_reviewers"] = ["mallory"]
    path.write_text(json.dumps(document))
    with pytest.raises(PolicyError, match="not signed"):
        load_policy()
