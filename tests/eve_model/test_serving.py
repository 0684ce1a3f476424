"""`eve serve` as a real uvicorn subprocess: completions, batching parity, and 4xx for every bad input."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.fixtures.eve_serve import EveServer

MAX_REQUEST_BYTES = 64 * 1024

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


def chat(server: EveServer, payload, **kwargs) -> httpx.Response:
    content = payload if isinstance(payload, (bytes, str)) else json.dumps(payload)
    return httpx.post(f"{server.url}/v1/chat/completions", content=content,
                      headers={"content-type": "application/json"}, timeout=120, **kwargs)


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
