"""The ``openai`` backend: any OpenAI-compatible chat-completions endpoint (``eve serve``, vLLM, ...).

Images go as base64 data URLs. At most ``concurrency`` requests are in flight; a connection
error, timeout, 429 or 5xx is retried with capped exponential backoff and jitter (so a restarted
server is waited for), waiting at least what a ``Retry-After`` header asks (up to the backoff cap);
401 and 403 stop the run (the key is missing or wrong: every image would fail the same way); other
4xx answers are the image's fault and become a per-image error. The API key is read from the
environment variable named in the config and is sent only in the Authorization header: it never
enters logs, errors, provenance or the cache (it is registered with ``tasks.redact`` as well).
"""

from __future__ import annotations

import base64
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
import httpx

from tasks.caption.backends.base import CaptionBackend, CaptionBackendError, CaptionInput, CaptionOutput
from tasks.caption.provenance import BackendIdentity, PromptTemplate
from tasks.redact import register_secret, url_without_credentials

logger = logging.getLogger(__name__)

_MIME = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class OpenAICaptionBackend(CaptionBackend):
    def __init__(
        self,
        *,
        endpoint_url: str,
        model: str,
        template: PromptTemplate,
        decoding: dict[str, Any],
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 4,
        request_timeout_seconds: float = 60.0,
        max_retries: int = 6,
        backoff_initial_seconds: float = 0.5,
        backoff_max_seconds: float = 30.0,
    ) -> None:
        self.endpoint_url = endpoint_url.rstrip("/")
        self.api_key_env = api_key_env
        self.model = model
        self.template = template
        self.decoding = decoding
        self.max_retries = max_retries
        self.backoff_initial_seconds = backoff_initial_seconds
        self.backoff_max_seconds = backoff_max_seconds
        headers = {"content-type": "application/json"}
        api_key = os.environ.get(api_key_env)
        if api_key:
            register_secret(api_key)  # scrubbed by value from any log line or message (tasks.redact)
            headers["authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(request_timeout_seconds),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="caption-openai")
        self._stats_lock = threading.Lock()
        self.requests_sent = 0
        """HTTP requests sent, retries included (for progress and tests)."""
        self.retries = 0
        """Requests that were retried."""
        self._identity = BackendIdentity(
            backend="openai",
            model_id=model,
            weights_sha256=self._reported_weights_hash(),
            prompt_template=template.ref,
            prompt_text=template.text,
            decoding=decoding,
            endpoint=url_without_credentials(self.endpoint_url),
        )

    @property
    def identity(self) -> BackendIdentity:
        return self._identity

    def _reported_weights_hash(self) -> str | None:
        """The weights hash the server reports in /models (eve serve does), else None.

        It is part of the cache key, so new weights behind the same model name miss the cache.
        An unreachable endpoint raises ``CaptionBackendError`` here, before any work starts.
        """
        response = self._request("GET", f"{self.endpoint_url}/models")
        if response.status_code != 200:
            return None
        try:
            entries = response.json().get("data", [])
        except (ValueError, AttributeError):
            return None
        for entry in entries:
            if isinstance(entry, dict) and entry.get("id") == self.model:
                return entry.get("weights_sha256")
        return None

    def _request(self, method: str, url: str, payload: dict | None = None) -> httpx.Response:
        """One request with retries; returns the final response (2xx or a non-retryable 4xx)."""
        last_problem = ""
        retry_after_seconds = 0.0
        safe_url = url_without_credentials(url)  # logs and errors never carry credentials
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = min(self.backoff_max_seconds, self.backoff_initial_seconds * 2 ** (attempt - 1))
                time.sleep(max(delay * random.uniform(0.5, 1.0), min(retry_after_seconds, self.backoff_max_seconds)))
                with self._stats_lock:
                    self.retries += 1
            with self._stats_lock:
                self.requests_sent += 1
            try:
                response = self._client.request(method, url, json=payload)
            except httpx.TransportError as error:  # refused, reset, timeout: the server may come back
                last_problem = f"{type(error).__name__}"
                logger.warning("caption request to %s failed (%s), attempt %d/%d",
                               safe_url, last_problem, attempt + 1, self.max_retries + 1)
                continue
            if response.status_code in (401, 403):
                raise CaptionBackendError(
                    f"{safe_url} refused the request (HTTP {response.status_code}): check the API key in "
                    f"${self.api_key_env}"
                )
            if response.status_code in _RETRY_STATUS:
                last_problem = f"HTTP {response.status_code}"
                header = response.headers.get("retry-after", "")
                retry_after_seconds = float(header) if header.isdigit() else 0.0
                logger.warning("caption request to %s got %s, attempt %d/%d",
                               safe_url, last_problem, attempt + 1, self.max_retries + 1)
                continue
            return response
        raise CaptionBackendError(
            f"{safe_url} did not answer after {self.max_retries + 1} attempts (last: {last_problem})"
        )

    def _caption_one(self, item: CaptionInput) -> CaptionOutput:
        if item.image_bytes is None:
            return CaptionOutput(None, "sample has no image")
        data_url = f"data:{_MIME.get(item.image_ext or '', 'image/png')};base64," + base64.b64encode(item.image_bytes).decode()
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": self.template.text},
                {"type": "image_url", "image_url": {"url": data_url}},
            ]}],
            "max_tokens": self.decoding["max_new_tokens"],
            "temperature": self.decoding["temperature"],
        }
        if self.decoding["temperature"] > 0:
            payload["top_p"] = self.decoding.get("top_p", 1.0)
            if self.decoding.get("seed") is not None:
                payload["seed"] = self.decoding["seed"]
        response = self._request("POST", f"{self.endpoint_url}/chat/completions", payload)
        if response.status_code != 200:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            return CaptionOutput(None, f"HTTP {response.status_code}: {message}")
        try:
            text = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return CaptionOutput(None, "malformed completion response")
        text = (text or "").strip()
        return CaptionOutput(text or None, None if text else "empty completion")

    def caption_batch(self, inputs: list[CaptionInput]) -> list[CaptionOutput]:
        # map() keeps order and re-raises CaptionBackendError from any worker.
        return list(self._pool.map(self._caption_one, inputs))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()


__all__ = ["OpenAICaptionBackend"]
