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

Concurrent requests are batched: one engine thread collects what arrives within ``batch_window_ms``
(up to ``max_batch_size``) and runs one left-padded ``generate`` per group of equal sampling
settings. ``VisionTextGenerator`` is also the engine of the ``hf`` caption backend.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError
# FastAPI resolves handler annotations from module globals, so these two live here (both are light).
from starlette.requests import Request
from starlette.responses import JSONResponse

from eve_model.constants import IMAGE_PLACEHOLDER
from eve_model.identity import weights_sha256

DEFAULT_MAX_REQUEST_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 64_000_000


# ------------------------------------------------------------------------------------------- model side
class ImageInputError(ValueError):
    """An image that cannot be decoded or used (a client error)."""


@dataclass
class GenerationRequest:
    """One prompt to complete. ``image`` is encoded bytes; ``prompt`` already holds the placeholder."""

    prompt: str
    image: bytes | None = None
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class VisionTextGenerator:
    """Batched image+text -> text generation over a local checkpoint directory.

    EVE checkpoints (``config.json`` model_type "eve") load with ``EveForCausalLM`` and
    ``EveProcessor``; prompts use the ``vicuna_v1`` template the SFT stage trains on.
    """

    def __init__(self, model_dir: str | Path, device: str = "cpu") -> None:
        import torch

        from eve_model.modeling_eve import EveForCausalLM
        from eve_model.processing_eve import VICUNA_V1_SYSTEM, EveProcessor

        self.model_dir = Path(model_dir)
        config = json.loads((self.model_dir / "config.json").read_text())
        if config.get("model_type") != "eve":
            raise ValueError(
                f"{self.model_dir}: model_type {config.get('model_type')!r} is not supported; "
                "only EVE checkpoints (model_type 'eve') can be served"
            )
        self._torch = torch
        self.device = torch.device(device)
        self.processor = EveProcessor.from_pretrained(self.model_dir)
        self.model = EveForCausalLM.from_pretrained(self.model_dir).to(self.device).eval()
        self.system_prompt = VICUNA_V1_SYSTEM
        self.eos_text = self.processor.tokenizer.eos_token
        self.weights_sha256 = weights_sha256(self.model_dir)

    def chat_prompt(self, turns: list[tuple[str, str]], has_image: bool, system: str | None = None) -> str:
        """vicuna_v1 prompt for (role, text) turns ending with a user turn; the image goes first."""
        pieces = []
        for index, (role, text) in enumerate(turns):
            if role == "user":
                text = text.replace(IMAGE_PLACEHOLDER, "").strip()
                if index == 0 and has_image:
                    text = f"{IMAGE_PLACEHOLDER}\n{text}"
                prefix = f"{system or self.system_prompt} " if index == 0 else ""
                pieces.append(f"{prefix}USER: {text} ASSISTANT:")
            else:
                pieces.append(f" {text}{self.eos_text}")
        return "".join(pieces)

    def decode_image(self, data: bytes) -> Any:
        from PIL import Image

        try:
            image = Image.open(io.BytesIO(data))  # reads the header only
        except Exception as error:  # PIL raises many types for corrupt data
            raise ImageInputError(f"image data cannot be decoded: {error}") from error
        # Checked before decoding, so a decompression bomb never allocates its pixels.
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise ImageInputError(f"image of {image.width}x{image.height} pixels is over {MAX_IMAGE_PIXELS} pixels")
        try:
            image.load()
        except Exception as error:
            raise ImageInputError(f"image data cannot be decoded: {error}") from error
        return image

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Complete a batch; requests must share temperature/top_p/seed. Output order = input order."""
        torch = self._torch
        images = [self.decode_image(r.image) if r.image is not None else None for r in requests]
        batch = self.processor.for_generation(images, [r.prompt for r in requests])
        batch = {name: value.to(self.device) for name, value in batch.items()}
        first = requests[0]
        max_new_tokens = max(r.max_new_tokens for r in requests)
        sampling: dict[str, Any] = {"do_sample": False}
        if first.temperature > 0:
            sampling = {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p}
            if first.seed is not None:
                torch.manual_seed(first.seed)
        output = self.model.generate(**batch, max_new_tokens=max_new_tokens, **sampling)  # (B, new)
        eos_id = self.processor.tokenizer.eos_token_id
        pad_id = self.processor.pad_token_id
        prompt_lengths = batch["attention_mask"].sum(dim=1).tolist()
        results = []
        for row, request, prompt_tokens in zip(output.tolist(), requests, prompt_lengths):
            row = row[: request.max_new_tokens]
            finish = "length"
            if eos_id in row:
                row, finish = row[: row.index(eos_id)], "stop"
            row = [token for token in row if token != pad_id]
            results.append(
                GenerationResult(
                    text=self.processor.decode(row),
                    prompt_tokens=int(prompt_tokens),
                    completion_tokens=len(row),
                    finish_reason=finish,
                )
            )
        return results


class BatchingEngine:
    """One thread that drains a queue into micro-batches for ``VisionTextGenerator.generate``."""

    def __init__(self, generator: VisionTextGenerator, max_batch_size: int = 8, batch_window_ms: float = 5.0):
        self.generator = generator
        self.max_batch_size = max_batch_size
        self.batch_window_seconds = batch_window_ms / 1000
        self._queue: queue.Queue[tuple[GenerationRequest, Future] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="eve-generate", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest) -> Future:
        future: Future = Future()
        self._queue.put((request, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            pending = [item]
            deadline = time.monotonic() + self.batch_window_seconds
            while len(pending) < self.max_batch_size:
                try:
                    extra = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if extra is None:
                    self._queue.put(None)
                    break
                pending.append(extra)
            groups: dict[tuple, list[tuple[GenerationRequest, Future]]] = {}
            for request, future in pending:
                groups.setdefault((request.temperature, request.top_p, request.seed), []).append((request, future))
            for group in groups.values():
                self._run_group(group)

    def _run_group(self, group: list[tuple[GenerationRequest, Future]]) -> None:
        try:
            results = self.generator.generate([request for request, _ in group])
        except Exception as error:  # noqa: BLE001 - a bad request must not poison the batch
            if len(group) == 1:
                group[0][1].set_exception(error)
                return
            for single in group:  # retry one by one, so only the offending request fails
                self._run_group([single])
            return
        for (_, future), result in zip(group, results):
            future.set_result(result)


# ------------------------------------------------------------------------------------------- HTTP side
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


__all__ = [
    "BatchingEngine",
    "GenerationRequest",
    "GenerationResult",
    "ImageInputError",
    "ServeSettings",
    "VisionTextGenerator",
    "create_app",
    "serve",
]
