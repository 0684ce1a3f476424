"""An OpenAI-compatible HTTP server for a local vision-language checkpoint (``eve serve``).

    eve serve runs/stage3/final --port 8000 --allowed-image-root /data/images
    curl -s 127.0.0.1:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Describe the image."},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]}]}'

Endpoints: ``POST /v1/chat/completions`` (OpenAI message format; one image per request as a data
URL, or as a local path / file:// URL under ``allowed_image_root``; greedy when temperature is 0,
else sampling; ``max_tokens``), ``GET /v1/models``, ``GET /health`` (with request counters).

Client errors never reach the model and never produce a 500: malformed JSON, a missing or empty
``messages``, unreadable image data, more than one image, a path outside the allowed root and a
body over ``max_request_bytes`` all get a 4xx with an OpenAI-style JSON error body. The server
binds to 127.0.0.1 unless told otherwise; request bodies are never logged.

Concurrent requests are batched by ``eve_model.generation.BatchingEngine`` (one left-padded ``generate``
per group of equal sampling settings); the model side (``VisionTextGenerator``) is in
``eve_model.generation``, this module is the HTTP app only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError
# FastAPI resolves handler annotations from module globals, so these two live here (both are light).
from starlette.requests import Request
from starlette.responses import JSONResponse

from eve_model.constants import IMAGE_PLACEHOLDER
from eve_model.generation import (
    BatchingEngine,
    GenerationRequest,
    GenerationResult,
    ImageInputError,
    VisionTextGenerator,
)

DEFAULT_MAX_REQUEST_BYTES = 20 * 1024 * 1024


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
    max_request_bytes: int = Field(default=DEFAULT_MAX_REQUEST_BYTES, ge=1024)
    """Largest accepted request body; larger bodies get 413."""
    allowed_image_root: Path | None = None
    """Images given as local paths must resolve inside this directory; None disables path images."""
    max_tokens_limit: int = Field(default=1024, ge=1)
    """Upper bound on a request's max_tokens."""
    default_max_tokens: int = Field(default=128, ge=1)
    """max_tokens when a request gives none."""
    max_batch_size: int = Field(default=8, ge=1)
    """Most requests generated together."""
    batch_window_ms: float = Field(default=5.0, ge=0.0)
    """How long the engine waits for more requests to join a batch."""
    device: str = "cpu"
    """torch device of the model ("cpu", "cuda", "cuda:1")."""


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
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    n: int = 1
    stream: bool = False


class ClientError(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def _error_body(message: str, code: str, param: str | None = None) -> dict[str, Any]:
    kind = "server_error" if code == "internal_error" else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


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
    root = allowed_root.resolve()
    candidate = Path(raw) if Path(raw).is_absolute() else root / raw
    resolved = candidate.resolve()  # follows symlinks, so a link out of the root is caught too
    if not resolved.is_relative_to(root):
        raise ClientError(403, "image path is outside the allowed image root", "path_not_allowed")
    if not resolved.is_file():
        raise ClientError(400, "image path does not name a file under the allowed root", "invalid_image")
    if resolved.stat().st_size > max_bytes:
        raise ClientError(413, f"image file is over {max_bytes} bytes", "request_too_large")
    return resolved.read_bytes()


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


def create_app(settings: ServeSettings, generator: VisionTextGenerator | None = None):
    """The FastAPI application (the model loads here unless a ``generator`` is passed)."""
    from fastapi import FastAPI
    from starlette.exceptions import HTTPException as StarletteHTTPException

    generator = generator or VisionTextGenerator(settings.model_dir, device=settings.device)
    engine = BatchingEngine(generator, settings.max_batch_size, settings.batch_window_ms)
    model_id = settings.model_id or settings.model_dir.resolve().name
    counters = {"chat_completions": 0, "client_errors": 0, "server_errors": 0}
    started = int(time.time())
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        engine.close()

    app = FastAPI(title="eve serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.engine = engine
    app.state.counters = counters

    def error(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
        counters["server_errors" if status >= 500 else "client_errors"] += 1
        return JSONResponse(_error_body(message, code, param), status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), "not_found" if exc.status_code == 404 else "http_error")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_id, "requests": dict(counters)}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": model_id, "object": "model", "created": started, "owned_by": "eve-platform",
                      "weights_sha256": generator.weights_sha256}],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_request_bytes:
            return error(413, f"request body over {settings.max_request_bytes} bytes", "request_too_large")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_request_bytes:
                return error(413, f"request body over {settings.max_request_bytes} bytes", "request_too_large")
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return error(400, f"request body is not valid JSON: {exc}", "invalid_json")
        try:
            turns, system, image, chat = _parse_chat(payload, settings)
            if chat.model not in (None, model_id):
                raise ClientError(404, f"model {chat.model!r} is not served here (serving {model_id!r})", "model_not_found", "model")
            max_tokens = chat.max_completion_tokens or chat.max_tokens or settings.default_max_tokens
            if max_tokens > settings.max_tokens_limit:
                raise ClientError(400, f"max_tokens is limited to {settings.max_tokens_limit}", "invalid_request", "max_tokens")
            if image is not None:  # reject bad bytes here, before they join a batch
                await asyncio.to_thread(generator.decode_image, image)
        except ClientError as exc:
            return error(exc.status, exc.message, exc.code, exc.param)
        except ImageInputError as exc:
            return error(400, str(exc), "invalid_image")
        job = GenerationRequest(
            prompt=generator.chat_prompt(turns, image is not None, system),
            image=image,
            max_new_tokens=max_tokens,
            temperature=chat.temperature,
            top_p=chat.top_p,
            seed=chat.seed,
        )
        try:
            result: GenerationResult = await asyncio.wrap_future(engine.submit(job))
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
    """Load the model and serve until interrupted (uvicorn, one process)."""
    import uvicorn

    app = create_app(settings)
    # access_log off: request lines are fine, but bodies and headers (API keys) must never be logged.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", access_log=False)


__all__ = ["DEFAULT_MAX_REQUEST_BYTES", "ServeSettings", "create_app", "serve"]
