"""``eve users``, ``eve policy``, ``eve keys`` and the demo's review instructions, in process."""

from __future__ import annotations

import re

import pytest

from cli.main import main as eve


@pytest.fixture(autouse=True)
def own_secrets(eve_home, monkeypatch):
    """Keys and accounts of this test's platform home, not a session's shared ones."""
    monkeypatch.delenv("EVE_KEYS_DIR", raising=False)
    monkeypatch.delenv("EVE_AUTH_DIR", raising=False)


def test_users_add_prints_a_generated_password_once_and_it_logs_in(eve_home, capsys):
    from tasks.accounts import AccountStore

    assert eve(["users", "add", "carol"]) == 0
    password = re.search(r"password \(shown once, not stored\): (\S+)", capsys.readouterr().out).group(1)
    assert AccountStore.default().authenticate("carol", password) is not None
    assert eve(["users", "add", "carol"]) == 1 and "exists" in capsys.readouterr().err
    assert eve(["users", "list"]) == 0 and "carol" in capsys.readouterr().out
    assert eve(["users", "remove", "carol"]) == 0
    assert AccountStore.default().authenticate("carol", password) is None


def test_policy_set_is_signed_audited_and_shown(eve_home, capsys):
    from tasks import audit
    from tasks.policy import load_policy

    assert eve(["policy", "show"]) == 1 and "no approval policy" in capsys.readouterr().err
    assert eve(["policy", "set", "--reviewers", "bob,carol", "--approvals", "2", "--by", "ops"]) == 0
    rule = load_policy().rule_for("eve")
    assert rule.allowed_reviewers == ["bob", "carol"] and rule.approvals_needed == 2
    assert eve(["policy", "set", "--reviewers", "bob", "--two-person", "--by", "ops"]) == 2  # 2 needed, 1 allowed
    assert audit.AuditLog.default().records()[-1].event == audit.POLICY_UPDATED
    assert eve(["policy", "show"]) == 0 and '"bob"' in capsys.readouterr().out


def test_keys_show_lists_fingerprints_and_allowed_signers(eve_home, capsys):
    from tasks.signing import KeyRing

    fingerprint = KeyRing.default().ensure("platform")
    assert eve(["keys", "show"]) == 0 and fingerprint in capsys.readouterr().out
    assert eve(["keys", "show", "--allowed-signers"]) == 0
    assert capsys.readouterr().out.startswith("eve-platform ssh-ed25519 ")


def test_the_demo_tells_the_reviewer_how_to_log_in_with_a_one_time_password(eve_home):
    from cli.demo import review_instructions

    text = review_instructions("v0.1.0", "http://127.0.0.1:4200", "s3cr3t-one-time", ["reviewer"])
    assert "reviewer:s3cr3t-one-time" in text and "one-time password" in text
    assert "PREFECT_API_AUTH_STRING='reviewer:s3cr3t-one-time' .venv/bin/eve promote approve v0.1.0" in text
    assert "your own password" in review_instructions("v0.1.0", "http://x", None, ["bob"])
