"""`eve serve` as a real uvicorn subprocess: completions, batching parity, 4xx for every bad input
(a hostile request corpus built here), the context limit, cancelled abandoned work, a bounded queue,
image bombs that raise no memory, API keys and the refusal to expose the model without one."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.eve_model.hostile_images import png_declaring, tiff_declaring
from tests.fixtures.eve_serve import REPO_ROOT, EveServer

MAX_REQUEST_BYTES = 1024 * 1024

pytestmark = pytest.mark.slow


def png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (24, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def user_message(text: str, image_url: str | None = None) -> dict:
    content: list[dict] = [{"type": "text", "text": text}]
    if image_url is not None:
        content.append({"type": "image_url", "image_url": {"url": image_url}})
    return {"role": "user", "content": content}


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    (root / "red.png").write_bytes(png_bytes((200, 20, 20)))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


@pytest.fixture(scope="module")
def server(tiny_eve_checkpoint, image_root, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    instance = EveServer(tiny_eve_checkpoint, log, [
        "--allowed-image-root", str(image_root), "--max-request-bytes", str(MAX_REQUEST_BYTES),
        "--model-id", "tiny-eve",
    ]).start()
    yield instance
    instance.stop()


def chat(server: EveServer, payload, headers: dict[str, str] | None = None, **kwargs) -> httpx.Response:
    content = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
    return httpx.post(f"{server.url}/v1/chat/completions", content=content,
                      headers={"content-type": "application/json", **(headers or {})}, timeout=120, **kwargs)


def test_models_and_health(server, tiny_eve_checkpoint) -> None:
    from eve_model.identity import weights_sha256

    models = httpx.get(f"{server.url}/v1/models").json()
    assert [model["id"] for model in models["data"]] == ["tiny-eve"]
    assert models["data"][0]["weights_sha256"] == weights_sha256(tiny_eve_checkpoint)
    assert server.health()["status"] == "ok"


def test_greedy_completion_matches_the_model_and_batching_changes_nothing(server, image_root, tiny_eve_checkpoint) -> None:
    from eve_model.generation import GenerationRequest, VisionTextGenerator

    image = png_bytes((10, 120, 240))
    payload = {"messages": [user_message("Describe the image.", data_url(image))], "max_tokens": 8}
    response = chat(server, payload)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny-eve"
    assert body["usage"]["completion_tokens"] <= 8

    # The same request decoded in-process, unbatched, gives the same text (greedy is deterministic).
    generator = VisionTextGenerator(tiny_eve_checkpoint)
    prompt = generator.chat_prompt([("user", "Describe the image.")], has_image=True)
    [expected] = generator.generate([GenerationRequest(prompt=prompt, image=image, max_new_tokens=8)])
    assert body["choices"][0]["message"]["content"] == expected.text
    # Usage counts the prompt's text tokens (BOS + text, the visual block as its one <image> placeholder).
    text_tokens = 1 + len(generator.processor.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert body["usage"]["prompt_tokens"] == expected.prompt_tokens == text_tokens

    # Concurrent requests (batched together by the engine) each get their own unbatched answer.
    path_payload = {"messages": [user_message("What colour?", str(image_root / "red.png"))], "max_tokens": 8}
    text_payload = {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 8}
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda p: chat(server, p), [payload, path_payload, text_payload] * 2))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    texts = [r.json()["choices"][0]["message"]["content"] for r in responses]
    assert texts[0] == texts[3] == expected.text and texts[1] == texts[4] and texts[2] == texts[5]


def test_sampling_with_a_seed_is_reproducible(server) -> None:
    payload = {"messages": [{"role": "user", "content": "Tell me something"}], "max_tokens": 6,
               "temperature": 1.0, "seed": 123}
    first, second = chat(server, payload).json(), chat(server, payload).json()
    assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("name", "payload", "status", "code"),
    [
        ("malformed json", b'{"messages": [', 400, "invalid_json"),
        ("not an object", b"[1, 2]", 400, "invalid_request"),
        ("missing messages", {"max_tokens": 3}, 400, "missing_messages"),
        ("empty messages", {"messages": []}, 400, "invalid_request"),
        ("bad base64", {"messages": [user_message("x", "data:image/png;base64,@@@")]}, 400, "invalid_image"),
        ("undecodable image", {"messages": [user_message("x", data_url(b"GIF89a-garbage"))]}, 400, "invalid_image"),
        ("two images", {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url(png_bytes((1, 2, 3)))}},
            {"type": "image_url", "image_url": {"url": data_url(png_bytes((4, 5, 6)))}}]}]}, 400, "too_many_images"),
        ("path outside root", {"messages": [user_message("x", "/etc/passwd")]}, 403, "path_not_allowed"),
        ("relative escape", {"messages": [user_message("x", "../../etc/passwd")]}, 403, "path_not_allowed"),
        ("file url outside", {"messages": [user_message("x", "file:///etc/hostname")]}, 403, "path_not_allowed"),
        ("broken file", {"messages": [user_message("x", "broken.png")]}, 400, "invalid_image"),
        ("remote url", {"messages": [user_message("x", "http://example.com/a.png")]}, 400, "invalid_image"),
        ("assistant last", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
         400, "invalid_request"),
        ("bad max_tokens", {"messages": [{"role": "user", "content": "a"}], "max_tokens": 0}, 400, "invalid_request"),
        ("too many tokens", {"messages": [{"role": "user", "content": "a"}], "max_tokens": 10**6}, 400, "invalid_request"),
        ("unknown model", {"model": "gpt-9", "messages": [{"role": "user", "content": "a"}]}, 404, "model_not_found"),
        ("oversized body", {"messages": [{"role": "user", "content": "x" * (MAX_REQUEST_BYTES + 10)}]},
         413, "request_too_large"),
    ],
)
def test_bad_requests_get_4xx_json_and_the_server_survives(server, name, payload, status, code) -> None:
    response = chat(server, payload)
    assert response.status_code == status, (name, response.text)
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["type"] == "invalid_request_error"
    assert server.health()["status"] == "ok"


def test_oversized_body_without_content_length_is_refused(server) -> None:
    def chunks():
        for _ in range(8):
            yield b"x" * (MAX_REQUEST_BYTES // 4)

    response = httpx.post(f"{server.url}/v1/chat/completions", content=chunks(), timeout=60)
    assert response.status_code == 413
    assert server.process.poll() is None


def test_client_errors_are_counted_not_served(server) -> None:
    before = server.health()["requests"]
    chat(server, b"not json")
    after = server.health()["requests"]
    assert after["client_errors"] == before["client_errors"] + 1
    assert after["chat_completions"] == before["chat_completions"]
    assert after["server_errors"] == 0


def test_decompression_bomb_is_refused_before_decoding(server) -> None:
    buffer = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buffer, format="PNG")  # 81 Mpixel, a few KB on the wire
    assert len(buffer.getvalue()) < MAX_REQUEST_BYTES // 2
    response = chat(server, {"messages": [user_message("x", data_url(buffer.getvalue()))]})
    assert response.status_code == 400 and "pixels" in response.json()["error"]["message"]
    assert server.health()["status"] == "ok"


# ------------------------------------------------------------------------------- hostile request corpus


def _nested(depth: int) -> bytes:
    return b'{"messages": [{"role": "user", "content": "hi"}], "x": ' + b"[" * depth + b"]" * depth + b"}"


def _tiff() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="TIFF")
    return buffer.getvalue()


def _chat(**fields) -> dict:
    return {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **fields}


HOSTILE_BODIES: dict[str, bytes | dict] = {
    "nested 100000 deep": _nested(100_000),
    "nested 33 deep": _nested(33),
    "NaN temperature": b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    "Infinity max_tokens": b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": Infinity}',
    "-Infinity top_p": b'{"messages": [{"role": "user", "content": "hi"}], "top_p": -Infinity}',
    "1e400 temperature": b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}',
    "5000-digit max_tokens": b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"9" * 5000 + b"}",
    "temperature 1e-300": _chat(temperature=1e-300, seed=3),
    "temperature 5e-324": _chat(temperature=5e-324),
    "temperature -0.0": _chat(temperature=-0.0),
    "temperature 2": _chat(temperature=2.0, seed=1),
    "temperature 2.5": _chat(temperature=2.5),
    "temperature -1": _chat(temperature=-1),
    "temperature as text": _chat(temperature="warm"),
    "top_p 1e-300": _chat(temperature=1.0, top_p=1e-300, seed=2),
    "top_p 0": _chat(top_p=0),
    "top_p 1.5": _chat(top_p=1.5),
    "seed 2**64": _chat(temperature=1.0, seed=2**64),
    "seed -2**63": _chat(temperature=1.0, seed=-(2**63)),
    "seed 1.5": _chat(temperature=1.0, seed=1.5),
    "max_tokens 1.5": _chat(max_tokens=1.5),
    "max_tokens -5": _chat(max_tokens=-5),
    "max_tokens as list": _chat(max_tokens=[1]),
    "max_completion_tokens 10**30": _chat(max_completion_tokens=10**30),
    "n 0": _chat(n=0),
    "n 2": _chat(n=2),
    "stream": _chat(stream=True),
    "model as number": _chat(model=5),
    "messages as object": {"messages": {"role": "user"}},
    "messages as text": {"messages": "hi"},
    "message as number": {"messages": [1]},
    "role as number": {"messages": [{"role": 5, "content": "hi"}]},
    "unknown role": {"messages": [{"role": "tool", "content": "hi"}]},
    "content as number": {"messages": [{"role": "user", "content": 5}]},
    "part without type": {"messages": [{"role": "user", "content": [{"text": "hi"}]}]},
    "text part as number": {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
    "image part without url": {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
    "image_url as number": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": 7}]}]},
    "image in a system message": {"messages": [
        {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "user", "content": "hi"}]},
    "lone surrogate text": b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}',
    "NUL in an image path": {"messages": [user_message("x", "red.png\x00.png")]},
    "image placeholder in text": {"messages": [{"role": "user", "content": "<image> hi"}]},
    "two user turns": {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
    "invalid UTF-8 body": b'{"messages": [{"role": "user", "content": "caf\xe9"}]}',
    "empty body": b"",
    "null body": b"null",
    "string body": b'"hello"',
    "data URL that is not base64": {"messages": [user_message("x", "data:image/png,rawbytes")]},
    "empty data URL": {"messages": [user_message("x", "data:image/png;base64,")]},
    "TIFF image": {"messages": [user_message("x", "data:image/tiff;base64," + base64.b64encode(_tiff()).decode())]},
    "truncated PNG": {"messages": [user_message("x", data_url(png_bytes((1, 2, 3))[:40]))]},
    "zero-byte image": {"messages": [user_message("x", "data:image/png;base64,")]},
}


def test_a_hostile_request_corpus_gets_4xx_json_errors_or_an_answer_never_a_5xx(server) -> None:
    before = server.health()["requests"]
    client_errors = 0
    for name, payload in HOSTILE_BODIES.items():
        response = chat(server, payload)
        assert response.status_code < 500, (name, response.status_code, response.text[:300])
        body = response.json()  # JSON, never Starlette's plain-text 500
        if response.status_code >= 400:
            client_errors += 1
            error = body["error"]
            assert error["message"] and error["code"] and error["type"] == "invalid_request_error", (name, body)
        else:
            assert body["choices"][0]["message"]["role"] == "assistant", name
    after = server.health()["requests"]
    assert after["client_errors"] - before["client_errors"] == client_errors
    assert after["server_errors"] == 0 and server.process.poll() is None
    assert client_errors >= len(HOSTILE_BODIES) - 8  # the 1e-300-style temperatures and seeds are answered


# ------------------------------------------------------------------------------------- context limit


def test_a_prompt_longer_than_the_context_is_refused_at_once_with_the_counts(server) -> None:
    started = time.monotonic()
    response = chat(server, {"messages": [{"role": "user", "content": "lorem ipsum " * 15_000}]})  # 175 KiB
    elapsed = time.monotonic() - started
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and "context is 512 tokens" in error["message"]
    assert int(error["message"].split("the prompt is ")[1].split()[0]) > 15_000
    assert elapsed < 20  # the prompt held the engine for 290 s
    near = {"messages": [{"role": "user", "content": "word " * 400}], "max_tokens": 200}
    over = chat(server, near).json()["error"]
    assert over["code"] == "context_length_exceeded" and "max_tokens is 200" in over["message"]
    fitted = chat(server, {"messages": [{"role": "user", "content": "word " * 400}], "ignore_eos": True})
    assert fitted.status_code == 200, fitted.text[:300]
    usage = fitted.json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= 512  # the default max_tokens fitted the room
    assert server.health()["requests"]["context_length_exceeded"] >= 2


# ------------------------------------------------------------------------------- abandoned requests


def _send_and_abandon_later(port: int, payload: dict, headers: dict[str, str] | None = None) -> socket.socket:
    body = json.dumps(payload).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    connection = socket.create_connection(("127.0.0.1", port))
    connection.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       f"{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return connection


def _wait_for(condition, timeout_seconds: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_abandoned_requests_are_cancelled_and_do_not_delay_the_next(server) -> None:
    before = server.health()
    long_payload = {"messages": [{"role": "user", "content": "Tell me a long story"}], "max_tokens": 400, "ignore_eos": True}
    clients = [_send_and_abandon_later(server.port, long_payload) for _ in range(16)]
    _wait_for(lambda: server.health()["queue"]["waiting"] + server.health()["queue"]["running"] >= 16)
    for client in clients:  # 16 clients give up, as in the issue
        client.close()
    _wait_for(lambda: server.health()["requests"]["cancelled"] - before["requests"]["cancelled"] == 16)
    started = time.monotonic()
    response = chat(server, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    latency = time.monotonic() - started
    assert response.status_code == 200
    after = server.health()
    assert after["queue"]["waiting"] == 0
    generated = after["generated_tokens"] - before["generated_tokens"]
    assert generated < 16 * 400 // 4, generated  # not the 6,400 tokens nobody was waiting for
    assert latency < 30, latency  # the issue measured 236 s


# --------------------------------------------------------------------------------------- image bombs


def test_image_bombs_are_refused_without_raising_the_servers_memory(server) -> None:
    peak_before = server.peak_memory_bytes()
    bombs = {
        "float TIFF 8000x7999": "data:image/tiff;base64," + base64.b64encode(tiff_declaring(8000, 7999)).decode(),
        "PNG 40000x40000": data_url(png_declaring(40_000, 40_000)),
        "PNG 7000x7000 (under Pillow's limit, over the server's)": data_url(png_declaring(7_500, 7_000)),
    }
    for name, url in bombs.items():
        response = chat(server, {"messages": [user_message("x", url)]})
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_image", (name, response.text)
    growth = server.peak_memory_bytes() - peak_before
    assert growth < 64 * 1024 * 1024, growth  # the TIFF alone raised it by 1 GB


# -------------------------------------------------------------------------- API key and bounded queue


API_KEY = "eve-serve-canary-" + os.urandom(8).hex()


@pytest.fixture(scope="module")
def guarded(tiny_eve_checkpoint, tmp_path_factory):
    """A server with an API key (from the environment), batch size 1 and room for 2 waiting requests."""
    log = tmp_path_factory.mktemp("guarded-log") / "server.log"
    instance = EveServer(tiny_eve_checkpoint, log, ["--max-batch-size", "1", "--max-queued-requests", "2"],
                         env={"EVE_SERVE_API_KEY": API_KEY}).start()
    yield instance
    instance.stop()


def test_the_api_key_is_required_on_v1_and_never_logged(guarded) -> None:
    payload = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert chat(guarded, payload).status_code == 401
    wrong = chat(guarded, payload, headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{guarded.url}/v1/models").status_code == 401
    right = chat(guarded, payload, headers={"authorization": f"Bearer {API_KEY}"})
    assert right.status_code == 200, right.text
    health = guarded.health()  # open for probes
    assert health["requests"]["unauthorized"] == 3 and health["requests"]["client_errors"] == 3
    assert API_KEY not in guarded.log_path.read_text()


def test_a_full_queue_answers_429_with_retry_after(guarded) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    long_payload = {"messages": [{"role": "user", "content": "go on"}], "max_tokens": 300, "ignore_eos": True}
    clients = [_send_and_abandon_later(guarded.port, long_payload, headers)]
    try:
        _wait_for(lambda: guarded.health()["queue"]["running"] == 1)
        clients += [_send_and_abandon_later(guarded.port, long_payload, headers) for _ in range(2)]
        _wait_for(lambda: guarded.health()["queue"]["waiting"] == 2)
        response = chat(guarded, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, headers=headers)
        assert response.status_code == 429, response.text
        assert 1 <= int(response.headers["retry-after"]) <= 60
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        assert guarded.health()["requests"]["rejected_queue_full"] == 1
    finally:
        for client in clients:
            client.close()
    _wait_for(lambda: guarded.health()["queue"]["waiting"] + guarded.health()["queue"]["running"] == 0)


def test_requests_still_sending_their_body_count_against_the_bound(guarded) -> None:
    """Slow senders (headers, then nothing) hold a place each: past queue + batch size, the next is
    refused at once, before its body is read; when they give up they are not server errors."""
    headers = f"Authorization: Bearer {API_KEY}\r\n".encode()
    slow = []
    for _ in range(3):  # --max-queued-requests 2 + --max-batch-size 1
        connection = socket.create_connection(("127.0.0.1", guarded.port))
        connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + headers
                           + b"Content-Length: 1000\r\n\r\n{\"messages\": ")
        slow.append(connection)
    try:
        _wait_for(lambda: chat(guarded, {"messages": [{"role": "user", "content": "hi"}]},
                               headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 429, timeout_seconds=30)
    finally:
        for connection in slow:
            connection.close()
    # Once they are gone their places are free again (the server notices within moments).
    _wait_for(lambda: chat(guarded, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
                           headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200, timeout_seconds=30)
    assert guarded.health()["requests"]["server_errors"] == 0


def test_serving_beyond_loopback_without_a_key_refuses_to_start(tiny_eve_checkpoint) -> None:
    env = {key: value for key, value in os.environ.items() if key != "EVE_SERVE_API_KEY"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "cli.main", "serve", str(tiny_eve_checkpoint), "--host", "0.0.0.0",
                             "--port", "1"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "refusing to serve on 0.0.0.0 without an API key" in result.stdout
    assert time.monotonic() - started < 60  # refused before the model is loaded

    from eve_model.server import ServeConfigError, ServeSettings

    for host in ("127.0.0.1", "::1", "localhost"):
        ServeSettings(model_dir=tiny_eve_checkpoint, host=host).check_exposure()
    ServeSettings(model_dir=tiny_eve_checkpoint, host="0.0.0.0", api_key="k").check_exposure()
    ServeSettings(model_dir=tiny_eve_checkpoint, host="10.0.0.5", allow_unauthenticated_remote=True).check_exposure()
    with pytest.raises(ServeConfigError):
        ServeSettings(model_dir=tiny_eve_checkpoint, host="eve.example.org").check_exposure()
