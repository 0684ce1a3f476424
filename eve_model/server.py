"""An OpenAI-compatible HTTP server for a local vision-language checkpoint (``eve serve``).

    EVE_SERVE_API_KEY=... eve serve runs/stage3/final --port 8000 --allowed-image-root /data/images
    curl -s 127.0.0.1:8000/v1/chat/completions -H "Authorization: Bearer $EVE_SERVE_API_KEY" -d '{"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Describe the image."},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]}]}'

Endpoints: ``POST /v1/chat/completions`` (OpenAI message format; one image per request as a data
URL, or as a local path / file:// URL under ``allowed_image_root``; greedy when temperature is 0,
else sampling; ``max_tokens``; vLLM's ``ignore_eos``), ``GET /v1/models``, ``GET /health`` (with
request counters and the queue).

Every client error is a 4xx with an OpenAI-style JSON error body, counted in ``/health``'s
``client_errors``, and never reaches the model: malformed or deeply nested JSON, NaN/Infinity,
invalid parameters (a temperature of 1e-300 is greedy decoding, not a 500), a prompt longer than the
model's context (400 ``context_length_exceeded`` with the token count and the limit), an image of a
format, mode or declared size the server does not decode, more than one image, a path outside the
allowed root, a body over ``max_request_bytes``, a missing or wrong API key (401), a full queue (429
with ``Retry-After``). An unexpected failure is a JSON 500 counted in ``server_errors``.

Access: with an API key (``--api-key`` or the ``EVE_SERVE_API_KEY`` environment variable, as
``--api-key``/``VLLM_API_KEY`` in vLLM) every ``/v1`` request needs ``Authorization: Bearer <key>``;
``/health`` stays open for probes. The server binds to 127.0.0.1 unless told otherwise, and refuses
to start on any other address without a key unless ``allow_unauthenticated_remote`` is set. Request
bodies and headers are never logged.

Load: a request whose client disconnects is cancelled (dropped from the queue, or stopped at its
next token); the queue is bounded; batching is ``eve_model.generation.BatchingEngine``'s (one batch
per sampling setting within a prefill token budget; each row delivered when it ends). The model side is
``eve_model.generation``; this module is the HTTP app only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import hmac
import ipaddress
import json
import os
import stat
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
# FastAPI resolves handler annotations from module globals, so these two live here (both are light).
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from eve_model.constants import IMAGE_PLACEHOLDER
from eve_model.generation import (
    DEFAULT_DECODE_BUDGET_BYTES,
    DEFAULT_MAX_BATCH_PREFILL_TOKENS,
    MAX_IMAGE_PIXELS,
    BatchingEngine,
    DecodeBudget,
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    ImageInputError,
    PreparedImage,
    QueueFullError,
    VisionTextGenerator,
)

DEFAULT_MAX_REQUEST_BYTES = 20 * 1024 * 1024
API_KEY_ENV = "EVE_SERVE_API_KEY"
"""Environment variable holding the API key (preferred over ``--api-key``, which other users of the
machine can read from the process list)."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects in a request body; a chat request needs 6."""
DISCONNECT_POLL_SECONDS = 0.1
"""How often a waiting request checks whether its client is still there."""
CLIENT_CLOSED_REQUEST = 499
"""Status logged for a request whose client went away (nginx's convention; nobody receives it)."""


class ServeConfigError(ValueError):
    """Settings ``eve serve`` refuses to start with (the message says why and what to do)."""


class ServeSettings(BaseModel):
    """Settings of ``eve serve``."""

    model_dir: Path
    """Checkpoint directory (HF ``save_pretrained`` layout with the processor files)."""
    model_id: str | None = None
    """Name reported in /v1/models and responses; defaults to the directory name."""
    host: str = "127.0.0.1"
    """Bind address; loopback by default so nothing is exposed unless asked for."""
    port: int = 8000
    """TCP port."""
    api_key: SecretStr | None = None
    """Bearer token every /v1 request must carry; None = no authentication (loopback only, unless allowed)."""
    allow_unauthenticated_remote: bool = False
    """Serve on a non-loopback address without an API key (anyone who can reach the port can use it)."""
    max_request_bytes: int = Field(default=DEFAULT_MAX_REQUEST_BYTES, ge=1024)
    """Largest accepted request body; larger bodies get 413."""
    allowed_image_root: Path | None = None
    """Images given as local paths must resolve inside this directory; None disables path images."""
    max_tokens_limit: int = Field(default=1024, ge=1)
    """Upper bound on a request's max_tokens (the model's context bounds prompt + max_tokens as well)."""
    default_max_tokens: int = Field(default=128, ge=1)
    """max_tokens when a request gives none (less if the prompt leaves less room in the context)."""
    max_batch_size: int = Field(default=8, ge=1)
    """Most requests generated together."""
    batch_window_ms: float = Field(default=5.0, ge=0.0)
    """How long the engine waits for more requests to join a batch."""
    max_batch_prefill_tokens: int = Field(default=DEFAULT_MAX_BATCH_PREFILL_TOKENS, ge=1)
    """Prefill budget of a batch (rows x longest prompt): a longer prefill does not join other requests."""
    max_queued_requests: int = Field(default=64, ge=1)
    """Requests that may wait for the model; beyond that the server answers 429 with Retry-After. Requests
    still being read or decoded count too (up to this plus ``max_batch_size`` in flight), so that a
    flood of large bodies cannot hold memory before it reaches the queue."""
    max_image_pixels: int = Field(default=MAX_IMAGE_PIXELS, ge=1)
    """Largest declared image size (width x height) decoded; checked from the header, before decoding."""
    decode_budget_bytes: int = Field(default=DEFAULT_DECODE_BUDGET_BYTES, ge=1024 * 1024)
    """Memory all concurrent image decodes share; a decode waits for its share."""
    decode_threads: int = Field(default=4, ge=1)
    """Threads that decode images (apart from the ones that tokenize, so text requests never wait behind images)."""
    device: str = "cpu"
    """torch device of the model ("cpu", "cuda", "cuda:1")."""

    def check_exposure(self) -> None:
        """Refuse a non-loopback bind address without an API key, unless explicitly allowed."""
        if self.api_key is None and not self.allow_unauthenticated_remote and not is_loopback(self.host):
            raise ServeConfigError(
                f"refusing to serve on {self.host} without an API key: anyone who can reach it could use the model. "
                f"Set {API_KEY_ENV} (or --api-key), bind to 127.0.0.1, or pass --allow-unauthenticated-remote."
            )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class _ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None
    image_url: dict[str, Any] | str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[_ContentPart] | None = None


class _ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[_Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    n: int = 1
    stream: bool = False
    ignore_eos: bool = False


class ClientError(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.headers = status, message, code, param, headers


_ERROR_TYPES = {401: "authentication_error", 429: "rate_limit_error"}


def _error_body(status: int, message: str, code: str, param: str | None = None) -> dict[str, Any]:
    kind = "server_error" if status >= 500 else _ERROR_TYPES.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_depth_over(payload: Any, limit: int) -> bool:
    """Whether ``payload`` nests arrays/objects deeper than ``limit`` (iterative: no recursion)."""
    stack = [(payload, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                return True
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return False


def parse_body(body: bytes) -> Any:
    """The decoded JSON body, or a 400 ``ClientError`` (malformed, NaN/Infinity, nested too deeply)."""
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise ClientError(400, f"request body is nested deeper than {MAX_JSON_DEPTH} levels", "invalid_json") from None
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise ClientError(400, f"request body is not valid JSON: {exc}", "invalid_json") from None
    if _json_depth_over(payload, MAX_JSON_DEPTH):
        raise ClientError(400, f"request body is nested deeper than {MAX_JSON_DEPTH} levels", "invalid_json")
    return payload


def _resolve_image(url: str, allowed_root: Path | None, max_bytes: int) -> bytes:
    """Bytes of an image given as a data URL, a file:// URL or a local path under ``allowed_root``."""
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if not header.endswith(";base64") or not payload:
            raise ClientError(400, "image data URLs must be base64 (data:image/...;base64,...)", "invalid_image")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as error:
            raise ClientError(400, f"image data URL is not valid base64: {error}", "invalid_image") from error
    if url.startswith(("http://", "https://")):
        raise ClientError(400, "remote image URLs are not fetched; send a data URL", "invalid_image")
    if allowed_root is None:
        raise ClientError(403, "images by path are disabled on this server (no allowed image root)", "path_not_allowed")
    raw = unquote(urlparse(url).path) if url.startswith("file://") else url
    if "\x00" in raw:
        raise ClientError(400, "image path contains a NUL byte", "invalid_image")
    root = allowed_root.resolve()
    candidate = Path(raw) if Path(raw).is_absolute() else root / raw
    resolved = candidate.resolve()  # follows symlinks, so a link out of the root is caught too
    if not resolved.is_relative_to(root):
        raise ClientError(403, "image path is outside the allowed image root", "path_not_allowed")
    if not resolved.is_file():
        raise ClientError(400, "image path does not name a file under the allowed root", "invalid_image")
    if resolved.stat().st_size > max_bytes:
        raise ClientError(413, f"image file is over {max_bytes} bytes", "request_too_large")
    # O_NONBLOCK + fstat: a FIFO swapped in after the check cannot hang the request.
    with os.fdopen(os.open(resolved, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise ClientError(400, "image path does not name a regular file", "invalid_image")
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ClientError(413, f"image file is over {max_bytes} bytes", "request_too_large")
    return data


def _parse_chat(payload: Any, settings: ServeSettings) -> tuple[list[tuple[str, str]], str | None, bytes | None, _ChatRequest]:
    """(turns, system prompt, image bytes, request) from a decoded JSON body, or a ClientError."""
    if not isinstance(payload, dict):
        raise ClientError(400, "request body must be a JSON object", "invalid_request")
    if "messages" not in payload:
        raise ClientError(400, "'messages' is required", "missing_messages", "messages")
    try:
        request = _ChatRequest.model_validate(payload)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ClientError(400, f"invalid request at {where}: {first['msg']}", "invalid_request", where) from None
    if request.n != 1 or request.stream:
        raise ClientError(400, "only n=1 without streaming is supported", "unsupported")
    system, turns, image = None, [], None
    for index, message in enumerate(request.messages):
        parts = message.content if isinstance(message.content, list) else [
            _ContentPart(type="text", text=message.content or "")
        ]
        texts = []
        for part in parts:
            if part.type == "text":
                texts.append(part.text or "")
            elif part.type == "image_url":
                url = part.image_url.get("url") if isinstance(part.image_url, dict) else part.image_url
                if not isinstance(url, str) or not url:
                    raise ClientError(400, f"messages.{index}: image_url needs a url", "invalid_image")
                if image is not None:
                    raise ClientError(400, "only one image per request is supported", "too_many_images")
                if message.role != "user":
                    raise ClientError(400, "images must be in a user message", "invalid_image")
                image = _resolve_image(url, settings.allowed_image_root, settings.max_request_bytes)
            else:
                raise ClientError(400, f"messages.{index}: unsupported content type {part.type!r}", "invalid_request")
        text = "".join(texts)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate from a \ud800 escape: no tokenizer takes it
            raise ClientError(400, f"messages.{index}: text is not valid Unicode ({exc.reason} at {exc.start})",
                              "invalid_request") from None
        if IMAGE_PLACEHOLDER in text:
            raise ClientError(400, f"messages.{index}: text must not contain {IMAGE_PLACEHOLDER}", "invalid_request")
        if message.role == "system":
            system = text
        elif message.role in ("user", "assistant"):
            expected = "user" if len(turns) % 2 == 0 else "assistant"
            if message.role != expected:
                raise ClientError(400, "messages must alternate user/assistant, starting with user", "invalid_request")
            turns.append((message.role, text))
        else:
            raise ClientError(400, f"messages.{index}: unknown role {message.role!r}", "invalid_request")
    if not turns or turns[-1][0] != "user":
        raise ClientError(400, "the last message must be a user message", "invalid_request", "messages")
    return turns, system, image, request


def _bounded_max_tokens(chat: _ChatRequest, prompt_tokens: int, text_tokens: int, context: int,
                        settings: ServeSettings) -> int:
    """max_tokens for a request whose prompt takes ``prompt_tokens`` positions, or a 400 that says
    by how much the prompt (or prompt + max_tokens) is over the model's context."""
    image_part = f" ({text_tokens} text + {prompt_tokens - text_tokens} image)" if prompt_tokens != text_tokens else ""
    if prompt_tokens >= context:
        raise ClientError(400, f"the prompt is {prompt_tokens} tokens{image_part}; this model's context is {context} "
                               "tokens, which must also hold the answer", "context_length_exceeded", "messages")
    requested = chat.max_completion_tokens or chat.max_tokens
    if requested is not None and requested > settings.max_tokens_limit:
        raise ClientError(400, f"max_tokens is limited to {settings.max_tokens_limit}", "invalid_request", "max_tokens")
    if requested is not None and prompt_tokens + requested > context:
        raise ClientError(400, f"the prompt is {prompt_tokens} tokens{image_part} and max_tokens is {requested}: "
                               f"{prompt_tokens + requested} tokens, over this model's context of {context} tokens",
                          "context_length_exceeded", "max_tokens")
    return requested or min(settings.default_max_tokens, context - prompt_tokens)


class _BearerAuthentication:
    """ASGI middleware: every /v1 request carries ``Authorization: Bearer <key>`` (compared in constant
    time) or gets the 401 of ``reject``. A plain ASGI layer, so the endpoints still see their client's
    disconnect."""

    def __init__(self, app, expected: bytes, reject) -> None:
        self.app, self.expected, self.reject = app, expected, reject

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
            if not hmac.compare_digest(given, self.expected):
                await self.reject()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: ServeSettings, generator: VisionTextGenerator | None = None):
    """The FastAPI application (the model loads here unless a ``generator`` is passed)."""
    from fastapi import FastAPI
    from starlette.exceptions import HTTPException as StarletteHTTPException

    generator = generator or VisionTextGenerator(
        settings.model_dir, device=settings.device, max_image_pixels=settings.max_image_pixels,
        decode_budget=DecodeBudget(settings.decode_budget_bytes),
    )
    engine = BatchingEngine(generator, settings.max_batch_size, settings.batch_window_ms, settings.max_queued_requests,
                            settings.max_batch_prefill_tokens)
    model_id = settings.model_id or settings.model_dir.resolve().name
    counters = {"chat_completions": 0, "client_errors": 0, "server_errors": 0, "unauthorized": 0,
                "rejected_queue_full": 0, "context_length_exceeded": 0, "cancelled": 0}
    in_flight = [0]
    max_in_flight = settings.max_queued_requests + settings.max_batch_size
    decoder = concurrent.futures.ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="eve-decode")
    started = int(time.time())
    expected_authorization = (
        f"Bearer {settings.api_key.get_secret_value()}".encode() if settings.api_key is not None else None
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        engine.close()
        decoder.shutdown(wait=False, cancel_futures=True)

    async def in_decoder(function, *args):
        return await asyncio.get_running_loop().run_in_executor(decoder, function, *args)

    app = FastAPI(title="eve serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine = engine
    app.state.counters = counters

    def error(status: int, message: str, code: str, param: str | None = None,
              headers: dict[str, str] | None = None) -> JSONResponse:
        counters["server_errors" if status >= 500 else "client_errors"] += 1
        return JSONResponse(_error_body(status, message, code, param), status_code=status, headers=headers)

    def unauthorized() -> JSONResponse:
        counters["unauthorized"] += 1
        return error(401, "a valid API key is required (Authorization: Bearer <key>)", "invalid_api_key",
                     headers={"WWW-Authenticate": "Bearer"})

    if expected_authorization is not None:
        app.add_middleware(_BearerAuthentication, expected=expected_authorization, reject=unauthorized)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), "not_found" if exc.status_code == 404 else "http_error")

    @app.exception_handler(Exception)
    async def unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
        return error(500, f"internal error: {type(exc).__name__}", "internal_error")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok", "model": model_id, "requests": dict(counters),
            "queue": {"waiting": engine.queued, "running": engine.running, "limit": settings.max_queued_requests},
            "generated_tokens": engine.generated_tokens,
            "decode_budget": {"in_use_bytes": generator.decode_budget.in_use_bytes,
                              "capacity_bytes": generator.decode_budget.capacity_bytes},
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": model_id, "object": "model", "created": started, "owned_by": "eve-platform",
                      "weights_sha256": generator.weights_sha256, "max_model_len": generator.context_tokens}],
        }

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_request_bytes:
            raise ClientError(413, f"request body over {settings.max_request_bytes} bytes", "request_too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_request_bytes:
                raise ClientError(413, f"request body over {settings.max_request_bytes} bytes", "request_too_large")
        return bytes(body)

    async def prepare(request: Request) -> GenerationRequest:
        """The generation request, or a ClientError/ImageInputError; cheap checks first, the image last."""
        turns, system, image_bytes, chat = _parse_chat(parse_body(await read_body(request)), settings)
        if chat.model not in (None, model_id):
            raise ClientError(404, f"model {chat.model!r} is not served here (serving {model_id!r})", "model_not_found", "model")
        prompt = generator.chat_prompt(turns, image_bytes is not None, system)
        text_tokens = await asyncio.to_thread(generator.text_tokens, prompt)
        context = generator.context_tokens
        visual_tokens = 0
        if image_bytes is not None:  # from the header: an over-long prompt is refused before any decoding
            header = await in_decoder(generator.open_image_header, image_bytes)
            visual_tokens = generator.header_visual_tokens(header)
        prompt_tokens = text_tokens + max(visual_tokens - 1, 0)
        max_tokens = _bounded_max_tokens(chat, prompt_tokens, text_tokens, context, settings)
        image: PreparedImage | None = None
        if image_bytes is not None:  # decoded once, here, before it joins a batch
            image = await in_decoder(generator.prepare_image, image_bytes)
            prompt_tokens = text_tokens + image.visual_tokens - 1
        return GenerationRequest(prompt=prompt, image=image, max_new_tokens=max_tokens, temperature=chat.temperature,
                                 top_p=chat.top_p, seed=chat.seed, ignore_eos=chat.ignore_eos, prompt_tokens=prompt_tokens)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        if in_flight[0] >= max_in_flight:  # before the body is read: a flood holds no memory
            counters["rejected_queue_full"] += 1
            return error(429, f"the server has {in_flight[0]} requests in flight; retry later", "rate_limit_exceeded",
                         headers={"Retry-After": str(engine.retry_after_seconds())})
        in_flight[0] += 1
        try:
            return await complete(request)
        finally:
            in_flight[0] -= 1

    async def complete(request: Request) -> Response:
        try:
            job = await prepare(request)
            future = engine.submit(job)
        except ClientDisconnect:  # gone while sending its body: nothing to answer, nothing was queued
            counters["cancelled"] += 1
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        except ClientError as exc:
            if exc.code == "context_length_exceeded":
                counters["context_length_exceeded"] += 1
            return error(exc.status, exc.message, exc.code, exc.param, exc.headers)
        except ImageInputError as exc:
            return error(400, str(exc), "invalid_image")
        except QueueFullError as exc:
            counters["rejected_queue_full"] += 1
            return error(429, str(exc), "rate_limit_exceeded", headers={"Retry-After": str(exc.retry_after_seconds)})
        waiting = asyncio.wrap_future(future)
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=DISCONNECT_POLL_SECONDS)
                if done:
                    break
                if await request.is_disconnected():  # the client left: stop spending the model on it
                    job.cancel()
                    waiting.cancel()
                    counters["cancelled"] += 1
                    return Response(status_code=CLIENT_CLOSED_REQUEST)
            result: GenerationResult = waiting.result()
        except GenerationCancelled:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        except (ImageInputError, ValueError) as exc:  # EveInputError is a ValueError: the input's fault
            return error(400, str(exc), "invalid_input")
        except Exception as exc:  # noqa: BLE001 - reported as a server error, the server keeps running
            return error(500, f"generation failed: {type(exc).__name__}", "internal_error")
        counters["chat_completions"] += 1
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
            "system_fingerprint": generator.weights_sha256[:16],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "finish_reason": result.finish_reason}],
            "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                      "total_tokens": result.prompt_tokens + result.completion_tokens},
        })

    return app


def serve(settings: ServeSettings) -> None:
    """Check the exposure, load the model and serve until interrupted (uvicorn, one process)."""
    import uvicorn

    settings.check_exposure()
    app = create_app(settings)
    # access_log off: request lines are fine, but bodies and headers (API keys) must never be logged.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", access_log=False)


__all__ = ["API_KEY_ENV", "DEFAULT_MAX_REQUEST_BYTES", "ServeConfigError", "ServeSettings", "create_app",
           "is_loopback", "parse_body", "serve"]
