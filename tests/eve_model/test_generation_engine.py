"""Issue 15, the model side of ``eve serve`` in-process (tiny EVE): images decoded once under a memory
budget and refused from their header, prompts counted as the model sees them, no long prefill in a
batch with short requests, rows delivered as they end, cancelled work stopped, a bounded queue."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image, ImageFile

from eve_model.generation import (
    BatchingEngine,
    DecodeBudget,
    GenerationCancelled,
    GenerationRequest,
    ImageInputError,
    QueueFullError,
    VisionTextGenerator,
    decode_bytes_estimate,
)
from tests.eve_model.hostile_images import encode, png_declaring, tiff_declaring


@pytest.fixture(scope="module")
def generator(tiny_eve_checkpoint) -> VisionTextGenerator:
    return VisionTextGenerator(tiny_eve_checkpoint)


def text_request(generator: VisionTextGenerator, words: int, **options) -> GenerationRequest:
    prompt = generator.chat_prompt([("user", " ".join(["word"] * words))], has_image=False)
    return GenerationRequest(prompt=prompt, prompt_tokens=generator.text_tokens(prompt), **options)


# --------------------------------------------------------------------------------------------- images


def test_an_image_is_decoded_exactly_once_and_kept_at_model_size(generator, monkeypatch) -> None:
    decodes = []
    original = ImageFile.ImageFile.load

    def counting_load(self, *args, **kwargs):
        if getattr(self, "_im", None) is None:  # not decoded yet: this call decodes
            decodes.append(self.size)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    data = encode(Image.new("RGB", (1200, 900), (10, 200, 30)), "JPEG")
    prepared = generator.prepare_image(data)
    prompt = generator.chat_prompt([("user", "What colour?")], has_image=True)
    [result] = generator.generate([GenerationRequest(prompt=prompt, image=prepared, max_new_tokens=3)])
    assert decodes == [(1200, 900)]  # once, in prepare_image; generate reuses the prepared image
    assert max(prepared.image.size) == generator.processor.image_processor.image_max_side
    assert result.prompt_tokens == generator.text_tokens(prompt)
    assert generator.prompt_tokens(prompt, prepared) == generator.text_tokens(prompt) - 1 + prepared.visual_tokens

    # The same request with the encoded bytes gives the same answer (the path the hf backend takes).
    [again] = generator.generate([GenerationRequest(prompt=prompt, image=data, max_new_tokens=3)])
    assert again.text == result.text


def test_images_are_refused_from_their_header_before_any_decoding(generator, monkeypatch) -> None:
    def no_decoding(self, *args, **kwargs):
        raise AssertionError(f"decoded a {self.format} {self.mode} {self.size} image that should be refused")

    float_tiff = tiff_declaring(8000, 7999)
    assert Image.open(io.BytesIO(float_tiff)).size == (8000, 7999) and len(float_tiff) < 4096
    cases = {
        "float TIFF of 8000x7999 (the issue's)": (float_tiff, "format TIFF is not accepted"),
        "32-bit integer TIFF": (tiff_declaring(64, 64, mode="I"), "format TIFF is not accepted"),
        "TGA": (encode(Image.new("RGB", (8, 8)), "TGA"), "format TGA is not accepted"),
        "PNG declaring 40000x40000": (png_declaring(40_000, 40_000), "40000x40000 = 1,600,000,000 pixels is over the limit"),
        "PNG declaring 8000x7000": (png_declaring(8000, 7000), "over the limit of 50,000,000"),
        "not an image": (b"GIF89a-garbage", "cannot be decoded"),
    }
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    for name, (data, message) in cases.items():
        with pytest.raises(ImageInputError, match=message):
            generator.prepare_image(data)


def test_concurrent_decodes_share_one_memory_budget() -> None:
    budget = DecodeBudget(100)
    in_use, peak = [0], [0]
    lock = threading.Lock()

    def decode(amount: int) -> None:
        assert budget.acquire(amount, timeout_seconds=10)
        with lock:
            in_use[0] += amount
            peak[0] = max(peak[0], in_use[0])
        time.sleep(0.05)
        with lock:
            in_use[0] -= amount
        budget.release(amount)

    threads = [threading.Thread(target=decode, args=(60,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] == 60  # never two 60-byte decodes at once in a 100-byte budget
    assert budget.acquire(60, timeout_seconds=1)
    assert not budget.acquire(60, timeout_seconds=0.05)  # waits, then gives up: the server answers "busy"
    budget.release(60)
    with pytest.raises(ImageInputError, match="over the server's decode budget"):
        budget.acquire(101, timeout_seconds=0)
    assert decode_bytes_estimate(8000, 7999, "RGB") > 8000 * 7999 * 3


def test_a_generator_with_a_small_budget_refuses_an_image_it_can_never_decode(tiny_eve_checkpoint) -> None:
    small = VisionTextGenerator(tiny_eve_checkpoint, decode_budget=DecodeBudget(2 * 1024 * 1024))
    with pytest.raises(ImageInputError, match="decode budget"):
        small.prepare_image(encode(Image.new("RGB", (1000, 1000)), "PNG"))


def test_exif_orientation_is_applied_as_ingest_does(generator) -> None:
    upright = Image.new("RGB", (60, 120), (0, 0, 250))
    upright.paste((250, 0, 0), (0, 0, 60, 60))  # red on top
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif.tobytes())
    prepared = generator.prepare_image(sideways)
    width, height = prepared.image.size
    assert height > width
    top = np.asarray(prepared.image)[: height // 4].mean(axis=(0, 1))
    assert top[0] > 200 and top[2] < 60


# --------------------------------------------------------------------------------------------- engine


def _batches_of(generator, requests: list[GenerationRequest], budget: int) -> list[list[int]]:
    batches: list[list[int]] = []
    engine = BatchingEngine(generator, max_batch_size=8, batch_window_ms=300, max_batch_prefill_tokens=budget,
                            batch_observer=lambda batch: batches.append([r.prompt_tokens for r in batch]))
    try:
        for future in [engine.submit(request) for request in requests]:
            future.result(timeout=120)
    finally:
        engine.close()
    assert sorted(tokens for batch in batches for tokens in batch) == sorted(r.prompt_tokens for r in requests)
    return batches


def test_a_long_prefill_is_never_batched_with_short_requests_past_the_prefill_budget(generator) -> None:
    def requests() -> list[GenerationRequest]:  # the long one first: the oldest heads the next batch
        return [text_request(generator, 400, max_new_tokens=2)] + [text_request(generator, 3 + i, max_new_tokens=2) for i in range(4)]

    long_tokens = requests()[0].prompt_tokens
    assert long_tokens > 400
    batches = _batches_of(generator, requests(), budget=2 * long_tokens - 1)
    assert [long_tokens] in batches  # it ran alone: with any other row it would pass the budget
    assert any(len(batch) == 4 and max(batch) < 100 for batch in batches)  # the short ones ran together
    for batch in batches:
        assert max(batch) * len(batch) <= 2 * long_tokens - 1
    # Within the budget the same requests share one batch (one decode loop instead of two).
    assert [len(batch) for batch in _batches_of(generator, requests(), budget=8 * long_tokens)] == [5]


def test_each_row_is_delivered_when_it_ends_not_when_the_batch_does(generator) -> None:
    engine = BatchingEngine(generator, max_batch_size=4, batch_window_ms=200)
    try:
        quick = engine.submit(text_request(generator, 5, max_new_tokens=2, ignore_eos=True))
        slow = engine.submit(text_request(generator, 6, max_new_tokens=200, ignore_eos=True))
        result = quick.result(timeout=120)
        assert not slow.done()  # the quick row came back while its batch was still generating
        assert result.completion_tokens == 2 and result.finish_reason == "length"
        assert slow.result(timeout=300).completion_tokens == 200
    finally:
        engine.close()


def test_cancelled_work_leaves_the_queue_and_stops_generating(generator) -> None:
    engine = BatchingEngine(generator, max_batch_size=2, batch_window_ms=100)
    try:
        running = [text_request(generator, 5, max_new_tokens=400, ignore_eos=True) for _ in range(2)]
        queued = [text_request(generator, 5, max_new_tokens=400, ignore_eos=True) for _ in range(6)]
        futures = [engine.submit(request) for request in running + queued]
        deadline = time.monotonic() + 60
        while engine.running == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        for request in running + queued:  # every client went away
            request.cancel()
        started = time.monotonic()
        for future in futures:
            with pytest.raises(GenerationCancelled):
                future.result(timeout=60)
        assert time.monotonic() - started < 30
        follow_up = engine.submit(text_request(generator, 4, max_new_tokens=3))
        assert follow_up.result(timeout=60).completion_tokens <= 3
    finally:
        engine.close()
    assert engine.cancelled == 8
    assert engine.generated_tokens < 2 * 400 // 2  # the running rows stopped early; the queued never ran


def test_a_full_queue_refuses_with_a_retry_estimate(generator) -> None:
    engine = BatchingEngine(generator, max_batch_size=1, batch_window_ms=0, max_queued_requests=2)
    blockers = []
    try:
        blockers.append(text_request(generator, 5, max_new_tokens=300, ignore_eos=True))
        engine.submit(blockers[-1])
        deadline = time.monotonic() + 60
        while engine.running == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        for _ in range(2):
            blockers.append(text_request(generator, 5, max_new_tokens=300, ignore_eos=True))
            engine.submit(blockers[-1])
        with pytest.raises(QueueFullError) as raised:
            engine.submit(text_request(generator, 5, max_new_tokens=2))
        assert 1 <= raised.value.retry_after_seconds <= 60
        blockers[-1].cancel()  # a cancelled request frees its place at once
        engine.submit(text_request(generator, 5, max_new_tokens=2))
    finally:
        for request in blockers:
            request.cancel()
        engine.close()


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-6, 0.0])
def test_a_vanishing_temperature_is_greedy_decoding(generator, temperature: float) -> None:
    request = text_request(generator, 4, max_new_tokens=4, temperature=temperature, seed=1)
    greedy = text_request(generator, 4, max_new_tokens=4)
    [result] = generator.generate([request])
    [expected] = generator.generate([greedy])
    assert result.text == expected.text
