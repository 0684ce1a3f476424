"""Secrets never leave the process: scrubbing for log lines, exception text, tags, artifacts and records.

Credentials reach the platform in three ways, and each has one rule (docs/security.md, "Secrets"):

- **inside a URL** (``EVE_DVC_REMOTE=https://user:token@host/path``): ``split_url_credentials`` takes
  them out once, where the URL is read; what is stored, shown or committed is the URL without them
  (``url_without_credentials``), and the credentials travel in memory only (DVC gets them as
  runtime configuration, never in a config file);
- **in an environment variable whose name says it is a secret** (``AWS_SECRET_ACCESS_KEY``,
  ``OPENAI_API_KEY``, ``EVE_SERVE_API_KEY``, ``*_TOKEN``, ``*_PASSWORD``): their values are scrubbed
  wherever they show up in text;
- **registered by code** that holds a secret from elsewhere (``register_secret``).

``scrub_text`` applies all three to any text; ``scrub_data`` to nested records (a value under a
secret-looking key is replaced whole). ``install_log_scrubbing`` makes every log record of the
process go through ``scrub_text`` (message and traceback) before any handler sees it, the Prefect
API handler included; ``tasks/__init__.py`` installs it, so every process that imports the platform
has it. Exceptions are scrubbed where they are raised: a message is built from scrubbed parts, and
a cause that may hold a credential is not chained (``raise ... from None``), because Prefect stores
failure messages and results outside the log.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

REDACTED = "***"
"""What a scrubbed secret is replaced with."""

MIN_SECRET_LENGTH = 6
"""Shorter values are not scrubbed by value (a 3-character password would blank ordinary words);
they are still removed from URLs, which does not depend on their length."""

_SECRET_WORDS = frozenset({
    "token", "secret", "password", "passwd", "pwd", "passphrase", "apikey", "credential", "credentials",
    "signature", "sig", "authorization", "cookie",
})
_SECRET_WORD_PAIRS = frozenset({("api", "key"), ("access", "key"), ("private", "key"), ("auth", "string"), ("auth", "token")})
_NAME_WORDS = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")


def is_secret_name(name: str) -> bool:
    """Whether an environment variable, record key or query parameter of this name holds a secret.

    Whole words only (``AWS_SECRET_ACCESS_KEY``, ``apiKey``, ``auth_token``, ``X-Amz-Signature`` are;
    ``max_tokens``, ``TOKENIZERS_PARALLELISM``, ``author`` are not); a bare ``key`` counts too, as
    in ``?key=`` query strings."""
    words = [word.lower() for word in _NAME_WORDS.split(name) if word]
    if words == ["key"] or any(word in _SECRET_WORDS for word in words):
        return True
    return any(pair in _SECRET_WORD_PAIRS for pair in zip(words, words[1:]))


_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/\s@'\"<>]+)@")
_QUERY_PARAMETER = re.compile(r"(?P<lead>[?&;](?P<name>[^=&\s#'\"?;]+)=)(?P<value>[^&\s#'\";]+)")
_BEARER = re.compile(r"(?P<lead>\bbearer\s+)[A-Za-z0-9._~+/=\-]{8,}", re.IGNORECASE)
_AUTHORIZATION_HEADER = re.compile(
    r"(?P<lead>\bauthorization[\"']?\s*[:=]\s*[\"']?(?:bearer\s+|basic\s+)?)[^\s\"',}]+", re.IGNORECASE
)

_registered: set[str] = set()
_registered_lock = threading.Lock()


def split_url_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``(url without user:password@, user, password)``; user and password are None when absent.

    Percent-escapes in the credentials are decoded (``p%40ss`` is the password ``p@ss``); the password
    is also registered, so it is scrubbed from any text later."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    for secret in (password, parts.password):
        if secret:
            register_secret(secret)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), user, password


def url_without_credentials(url: str) -> str:
    """The URL as it may be shown: no user:password@, no query string and no fragment (where some
    gateways and presigned URLs carry keys)."""
    clean, _, _ = split_url_credentials(url)
    parts = urlsplit(clean)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def register_secret(value: str | None) -> None:
    """Scrub ``value`` from every text from now on (e.g. a password taken out of a URL)."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        with _registered_lock:
            _registered.add(value)


def _environment_secrets() -> set[str]:
    found = set()
    for name, value in os.environ.items():
        if not value:
            continue
        if is_secret_name(name) and len(value) >= MIN_SECRET_LENGTH:
            found.add(value)
        if "://" in value and "@" in value:  # a URL with credentials in any variable (EVE_DVC_REMOTE)
            try:
                parts = urlsplit(value)
                password = parts.password
            except ValueError:
                continue
            if password and len(password) >= MIN_SECRET_LENGTH:
                found.update({password, unquote(password)})
    return found


def known_secrets() -> list[str]:
    """Every secret value scrubbed by value, longest first (so a secret containing another goes whole)."""
    with _registered_lock:
        values = _registered | _environment_secrets()
    return sorted(values, key=len, reverse=True)


def scrub_text(text: str) -> str:
    """``text`` with URL credentials, secret query parameters, bearer tokens and every known secret
    value replaced by ``***``."""
    if not text:
        return text
    text = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
    text = _QUERY_PARAMETER.sub(
        lambda m: f"{m.group('lead')}{REDACTED}" if is_secret_name(m.group("name")) else m.group(0), text
    )
    text = _AUTHORIZATION_HEADER.sub(lambda m: f"{m.group('lead')}{REDACTED}", text)
    text = _BEARER.sub(lambda m: f"{m.group('lead')}{REDACTED}", text)
    for secret in known_secrets():
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def scrub_data(payload: Any) -> Any:
    """A copy of ``payload`` (dicts, lists, tuples, strings) with every string scrubbed and the value of
    every secret-looking key replaced whole."""
    if isinstance(payload, dict):
        return {
            key: REDACTED if isinstance(key, str) and is_secret_name(key) and payload[key] not in (None, "")
            else scrub_data(value)
            for key, value in payload.items()
        }
    if isinstance(payload, (list, tuple)):
        return type(payload)(scrub_data(value) for value in payload)
    if isinstance(payload, str):
        return scrub_text(payload)
    return payload


_FORMATTER = logging.Formatter()


def scrub_log_record(record: logging.LogRecord) -> logging.LogRecord:
    """Scrub a record in place: its rendered message, and its traceback text when it carries one."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed record is left to logging's own error handling
        return record
    scrubbed = scrub_text(message)
    if scrubbed != message or record.args:
        record.msg, record.args = scrubbed, None
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        # Handlers' formatters use exc_text when it is set, so the traceback is rendered once, scrubbed.
        record.exc_text = scrub_text(_FORMATTER.formatException(record.exc_info))
    elif record.exc_text:
        record.exc_text = scrub_text(record.exc_text)
    if record.stack_info:
        record.stack_info = scrub_text(record.stack_info)
    return record


def install_log_scrubbing() -> None:
    """Make every log record created in this process go through ``scrub_log_record`` (idempotent).

    A record factory, not a handler filter: it covers every logger and every handler, including the
    ones libraries (Prefect, DVC) attach later."""
    current = logging.getLogRecordFactory()
    if getattr(current, "eve_scrubbing", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return scrub_log_record(current(*args, **kwargs))

    factory.eve_scrubbing = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


__all__ = [
    "REDACTED",
    "install_log_scrubbing",
    "is_secret_name",
    "known_secrets",
    "register_secret",
    "scrub_data",
    "scrub_log_record",
    "scrub_text",
    "split_url_credentials",
    "url_without_credentials",
]
