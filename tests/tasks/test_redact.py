"""tasks.redact: what is scrubbed from text, records and log records, and what is left alone."""

from __future__ import annotations

import logging

import pytest

from tasks.redact import (
    REDACTED,
    install_log_scrubbing,
    is_secret_name,
    scrub_data,
    scrub_text,
    split_url_credentials,
    url_without_credentials,
)

SECRET = "canary-" + "5f3a9c1e7b2d4068"


def test_urls_lose_their_credentials_and_secret_query_parameters() -> None:
    assert split_url_credentials(f"https://eve:{SECRET}@host:8443/dvc?x=1") == ("https://host:8443/dvc?x=1", "eve", SECRET)
    assert split_url_credentials("https://eve:p%40ss%3Aword@host/dvc")[1:] == ("eve", "p@ss:word")
    assert split_url_credentials("s3://bucket/prefix") == ("s3://bucket/prefix", None, None)
    assert url_without_credentials(f"https://eve:{SECRET}@host/v1?api_key={SECRET}#frag") == "https://host/v1"
    text = (f"push to https://eve:{SECRET}@10.0.0.1/dvc failed; presigned s3://b/k?X-Amz-Signature=abcdef&X-Amz-Credential=AKIA1"
            f"&part=2; header Authorization: Bearer {SECRET}x; curl -H 'authorization: Basic ZXZlOnNlY3JldA=='")
    scrubbed = scrub_text(text)
    assert SECRET not in scrubbed and "abcdef" not in scrubbed and "AKIA1" not in scrubbed and "ZXZlOnNlY3JldA" not in scrubbed
    assert "https://***@10.0.0.1/dvc" in scrubbed and "part=2" in scrubbed  # what is not secret stays readable


def test_values_of_secret_variables_and_registered_secrets_are_scrubbed_anywhere(monkeypatch) -> None:
    monkeypatch.setenv("MY_TEACHER_API_KEY", SECRET)
    monkeypatch.setenv("EVE_DVC_REMOTE", "https://eve:an-url-password-123@host/dvc")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "falsefalse")  # not a secret, despite the word
    text = f"key {SECRET} and an-url-password-123 seen; tokenizers: falsefalse"
    assert scrub_text(text) == f"key {REDACTED} and {REDACTED} seen; tokenizers: falsefalse"
    assert [name for name in ("AWS_SECRET_ACCESS_KEY", "apiKey", "auth_token", "X-Amz-Signature", "PASSWORD", "key")
            if not is_secret_name(name)] == []
    assert [name for name in ("max_tokens", "prompt_tokens", "TOKENIZERS_PARALLELISM", "author", "keys", "monkey")
            if is_secret_name(name)] == []


def test_records_keep_their_shape_with_secrets_replaced() -> None:
    record = {"api_key": SECRET, "max_tokens": 5, "nested": [{"url": f"https://u:{SECRET}@h/x"}], "token": None}
    assert scrub_data(record) == {"api_key": REDACTED, "max_tokens": 5, "nested": [{"url": "https://***@h/x"}], "token": None}


def test_every_log_record_is_scrubbed_before_any_handler_sees_it(caplog) -> None:
    install_log_scrubbing()
    install_log_scrubbing()  # idempotent
    caplog.set_level(logging.INFO)
    logger = logging.getLogger("tests.redact")
    logger.warning("retrying %s", f"https://eve:{SECRET}@host/dvc")
    try:
        raise RuntimeError(f"push to https://eve:{SECRET}@host/dvc failed")
    except RuntimeError:
        logger.exception("push failed")
    handler_output = "\n".join(caplog.handler.format(record) for record in caplog.records)
    assert SECRET not in caplog.text and SECRET not in handler_output
    assert "https://***@host/dvc" in handler_output and "RuntimeError" in handler_output


@pytest.mark.parametrize("benign", ["a photo of a token booth", "use the basic authentication form", "key: value"])
def test_ordinary_text_is_left_alone(benign: str) -> None:
    assert scrub_text(benign) == benign
