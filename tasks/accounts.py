"""Accounts of the platform's Prefect server: people and service accounts (docs/security.md).

Every request to the platform's Prefect API is authenticated (``tasks/gateway.py``) against this
store: ``<auth dir>/accounts.json`` (``PlatformSettings.auth_dir``, 0600), one entry per account with
a bcrypt hash (salted, cost 12) of its password; no password is stored or shown again after it is
created. Three kinds:

- ``user``: a person. Logs in to the UI (the Prefect login asks for ``name:password``) or uses the
  CLI with ``PREFECT_API_AUTH_STRING=name:password``. Only users can review.
- ``service``: automation acting for itself (the operator's local CLI, CI). Can start retrains and
  promotions (it is then their requester); can never review.
- ``worker``: a Prefect worker. Runs flow runs that others created, so a run it creates (the
  retrain's hand-over of its promotion) is attributed to whoever created the run it executes.

The local services get their own service accounts (``eve-worker``, ``eve-cli``), whose generated
credentials sit in ``<auth dir>/credentials/<name>`` (0600) for the processes that run as them.

    store = AccountStore.default()
    password = store.add("carol", kind="user")      # shown once to the person
    store.authenticate("carol", password)            # -> Account
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from tasks.platform import PlatformSettings

AccountKind = Literal["user", "service", "worker"]
BCRYPT_ROUNDS = 12
"""bcrypt cost: ~0.25 s per check on one core here; the gateway caches a verified credential."""
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_BYTES = 72
"""bcrypt reads at most 72 bytes; longer passwords are refused rather than silently truncated."""
_NAME = re.compile(r"^[a-z][a-z0-9._-]{1,62}$")
WORKER_ACCOUNT = "eve-worker"
CLI_ACCOUNT = "eve-cli"
DEMO_REVIEWER = "reviewer"
"""The person account ``eve demo`` creates so that its promotion can be reviewed."""
LOCAL_SERVICE_ACCOUNTS: dict[str, AccountKind] = {WORKER_ACCOUNT: "worker", CLI_ACCOUNT: "service"}
"""The accounts of the local services, created with the local server."""


class AccountError(ValueError):
    """A bad account name or password, an existing or unknown account."""


class Account(BaseModel):
    """One account, as stored."""

    name: str
    """Login name (lower case, no colon): what the Prefect login and the audit log show."""

    kind: AccountKind
    """``user`` (a person), ``service`` (automation) or ``worker`` (a Prefect worker)."""

    password_bcrypt: str
    """bcrypt hash of the password (salt and cost inside)."""

    created_at: str
    """UTC time of creation or of the last password reset, ISO 8601."""

    origin: str = "cli"
    """What created it: ``cli`` (``eve users``), ``demo`` (``eve demo``'s reviewer), ``platform`` (local services)."""


class AccountFile(BaseModel):
    version: Literal[1] = 1
    accounts: dict[str, Account] = Field(default_factory=dict)


def generate_password() -> str:
    """A fresh random password (144 bits), for people and services alike."""
    return secrets.token_urlsafe(18)


def _hash_password(password: str) -> str:
    import bcrypt

    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(BCRYPT_ROUNDS)).decode("ascii")


def _check_password(password: str, hashed: str) -> bool:
    import bcrypt

    encoded = password.encode("utf-8")
    if len(encoded) > MAX_PASSWORD_BYTES:
        return False
    return bcrypt.checkpw(encoded, hashed.encode("ascii"))


_DUMMY_HASH: str | None = None


def _dummy_hash() -> str:
    # An unknown name costs as much as a wrong password, so timing does not reveal which names exist.
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = _hash_password(generate_password())
    return _DUMMY_HASH


class AccountStore:
    """The account file at ``path``; writes hold a file lock and replace the file atomically."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.credentials_dir = self.path.parent / "credentials"

    @classmethod
    def default(cls, settings: PlatformSettings | None = None) -> "AccountStore":
        return cls((settings or PlatformSettings.load()).auth_dir / "accounts.json")

    def _read(self) -> AccountFile:
        if not self.path.exists():
            return AccountFile()
        return AccountFile.model_validate_json(self.path.read_text())

    @contextmanager
    def _writing(self) -> Iterator[AccountFile]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                document = self._read()
                yield document
                temporary = self.path.with_suffix(".tmp")
                descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(descriptor, "w") as handle:
                    handle.write(document.model_dump_json(indent=2))
                os.replace(temporary, self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def version(self) -> tuple[int, int, int]:
        """Changes whenever the file is rewritten (inode, size, mtime): cached logins are dropped then."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return (0, 0, 0)
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    # ------------------------------------------------------------------ management

    def add(self, name: str, kind: AccountKind = "user", password: str | None = None, origin: str = "cli") -> str:
        """Create the account; returns its password (generated unless given). Raises if it exists."""
        _check_name(name)
        password = _check_new_password(password) if password is not None else generate_password()
        with self._writing() as document:
            if name in document.accounts:
                raise AccountError(f"account {name!r} exists (`eve users reset-password {name}` issues a new password)")
            document.accounts[name] = Account(
                name=name, kind=kind, password_bcrypt=_hash_password(password), created_at=_now(), origin=origin
            )
        return password

    def reset_password(self, name: str, password: str | None = None) -> str:
        """A new password for ``name`` (generated unless given); the old one stops working at once."""
        password = _check_new_password(password) if password is not None else generate_password()
        with self._writing() as document:
            account = document.accounts.get(name)
            if account is None:
                raise AccountError(f"no account {name!r}")
            document.accounts[name] = account.model_copy(
                update={"password_bcrypt": _hash_password(password), "created_at": _now()}
            )
        return password

    def remove(self, name: str) -> None:
        with self._writing() as document:
            if document.accounts.pop(name, None) is None:
                raise AccountError(f"no account {name!r}")
        (self.credentials_dir / name).unlink(missing_ok=True)

    def list(self) -> list[Account]:
        return sorted(self._read().accounts.values(), key=lambda account: account.name)

    def get(self, name: str) -> Account | None:
        return self._read().accounts.get(name)

    # ------------------------------------------------------------------ checks

    def authenticate(self, name: str, password: str) -> Account | None:
        """The account when ``password`` is its password, else None (same cost either way)."""
        account = self._read().accounts.get(name)
        if account is None:
            _check_password(password, _dummy_hash())
            return None
        return account if _check_password(password, account.password_bcrypt) else None

    # ------------------------------------------------------------------ local service credentials

    def service_auth_string(self, name: str) -> str:
        """``name:password`` of the local service account ``name`` (``LOCAL_SERVICE_ACCOUNTS``),
        created with its credential file on first use."""
        path = self.credentials_dir / name
        if path.exists() and self.get(name) is not None:
            return path.read_text().strip()
        kind = LOCAL_SERVICE_ACCOUNTS[name]
        password = self.reset_password(name) if self.get(name) else self.add(name, kind=kind, origin="platform")
        self.credentials_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(f"{name}:{password}\n")
        return f"{name}:{password}"


def issue_demo_reviewer(store: AccountStore | None = None) -> str | None:
    """A fresh one-time password for the demo's reviewer account (created on the first demo; a new
    password each run, shown once). None when an account of that name exists that the demo did not
    create: then it is someone's real account and is left alone."""
    store = store or AccountStore.default()
    account = store.get(DEMO_REVIEWER)
    if account is None:
        return store.add(DEMO_REVIEWER, kind="user", origin="demo")
    if account.origin != "demo":
        return None
    return store.reset_password(DEMO_REVIEWER)


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise AccountError(
            f"account name {name!r}: 2-63 characters, lower case letters, digits, '.', '_' or '-', starting with a letter"
        )


def _check_new_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise AccountError(f"a password may have at most {MAX_PASSWORD_BYTES} bytes (bcrypt's limit)")
    return password


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


__all__ = [
    "CLI_ACCOUNT",
    "DEMO_REVIEWER",
    "LOCAL_SERVICE_ACCOUNTS",
    "WORKER_ACCOUNT",
    "Account",
    "AccountError",
    "AccountKind",
    "AccountStore",
    "generate_password",
    "issue_demo_reviewer",
]
