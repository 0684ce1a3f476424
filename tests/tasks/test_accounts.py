"""Accounts of the platform's Prefect server: bcrypt hashes only, generated passwords shown once."""

from __future__ import annotations

import pytest

from tasks.accounts import DEMO_REVIEWER, AccountError, AccountStore, issue_demo_reviewer


@pytest.fixture
def store(tmp_path) -> AccountStore:
    return AccountStore(tmp_path / "auth" / "accounts.json")


def test_passwords_are_generated_hashed_and_checked(store):
    password = store.add("carol")
    assert len(password) >= 20 and password not in store.path.read_text()
    assert store.path.stat().st_mode & 0o777 == 0o600
    assert store.get("carol").password_bcrypt.startswith("$2b$12$")
    assert store.authenticate("carol", password).kind == "user"
    assert store.authenticate("carol", password + "x") is None
    assert store.authenticate("nobody", password) is None
    assert store.add("bob") != password  # no fixed default

    new = store.reset_password("carol")
    assert store.authenticate("carol", password) is None and store.authenticate("carol", new) is not None
    store.remove("carol")
    assert store.authenticate("carol", new) is None


@pytest.mark.parametrize(
    ("name", "password", "reason"),
    [
        ("Carol", None, "account name"),
        ("a:b", None, "account name"),
        ("carol", "short", "at least"),
        ("carol", "x" * 73, "at most 72 bytes"),
    ],
)
def test_bad_names_and_passwords_are_refused(store, name, password, reason):
    with pytest.raises(AccountError, match=reason):
        store.add(name, password=password)


def test_an_existing_account_is_not_overwritten(store):
    store.add("carol")
    with pytest.raises(AccountError, match="exists"):
        store.add("carol", kind="service")


def test_the_demo_reviewer_gets_a_fresh_one_time_password_but_a_real_account_is_left_alone(store, tmp_path):
    first = issue_demo_reviewer(store)
    second = issue_demo_reviewer(store)
    assert first and second and first != second
    assert store.authenticate(DEMO_REVIEWER, first) is None and store.authenticate(DEMO_REVIEWER, second)

    other = AccountStore(tmp_path / "other" / "accounts.json")
    mine = other.add(DEMO_REVIEWER, password="a-real-persons-password")
    assert issue_demo_reviewer(other) is None and other.authenticate(DEMO_REVIEWER, mine)


def test_local_service_credentials_are_created_once_and_kept_private(store):
    auth = store.service_auth_string("eve-worker")
    assert auth.startswith("eve-worker:") and store.service_auth_string("eve-worker") == auth
    assert store.get("eve-worker").kind == "worker"
    assert (store.credentials_dir / "eve-worker").stat().st_mode & 0o777 == 0o600
