"""Real teachers: the hf backend on a tiny EVE checkpoint, the openai backend through `eve serve`."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from eve_model.generation import GenerationRequest, VisionTextGenerator
from eve_model.identity import weights_sha256
from eve_model.shards import ShardSample, ShardWriter, iter_samples
from tasks.caption.backends import CaptionBackendError, build_backend
from tasks.caption.config import CaptionConfig
from tasks.caption.provenance import get_prompt_template
from tasks.caption.run import caption_dataset
from tests.tasks.caption.test_run import png, write_images

SECRET = "sk-test-never-log-this-0123456789"


def test_hf_backend_captions_with_a_tiny_eve_checkpoint(tmp_path, eve_home, tiny_eve_checkpoint) -> None:
    source = write_images(tmp_path / "in", 5, per_shard=3)
    config = CaptionConfig(backend="hf", model=str(tiny_eve_checkpoint), prompt_template="brief-v1",
                           max_new_tokens=6, batch_size=4)
    result = caption_dataset(source, tmp_path / "out", config, progress=False)
    assert (result.num_samples, result.num_captioned, result.num_failed) == (5, 5, 0)

    # Batched captions equal one-at-a-time greedy generation with the same prompt.
    generator = VisionTextGenerator(tiny_eve_checkpoint)
    prompt = generator.chat_prompt([("user", get_prompt_template("brief-v1").text)], has_image=True)
    for sample in iter_samples(tmp_path / "out"):
        [expected] = generator.generate([GenerationRequest(prompt=prompt, image=sample.image_bytes, max_new_tokens=6)])
        assert sample.caption == (expected.text.strip() or None)
        provenance = sample.meta["caption_provenance"]
        assert provenance["weights_sha256"] == weights_sha256(tiny_eve_checkpoint)
        assert provenance["prompt_template"] == "brief-v1"
        assert provenance["decoding"] == {"max_new_tokens": 6, "temperature": 0.0}
        assert sample.meta["source_caption"].startswith("source caption")


def test_hf_backend_reports_a_corrupt_image_per_sample(tiny_eve_checkpoint) -> None:
    from tasks.caption.backends import CaptionInput

    backend = build_backend(CaptionConfig(backend="hf", model=str(tiny_eve_checkpoint), max_new_tokens=4))
    outputs = backend.caption_batch([
        CaptionInput("good", png((1, 2, 3)), "png", "a", None),
        CaptionInput("bad", b"\x89PNG truncated", "png", "b", None),
    ])
    assert outputs[1].caption is None and "cannot be decoded" in outputs[1].error
    assert outputs[0].error is None or outputs[0].error == "empty generation"


def tiny_vision_encoder_decoder(directory) -> None:
    """A randomly initialised ViT + GPT-2 captioner (a plain transformers image-to-text directory)."""
    import torch
    from transformers import GPT2Config, ViTConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    from eve_model.tokenizer import load_tiny_tokenizer

    tokenizer = load_tiny_tokenizer()
    encoder = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64)
    decoder = GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=len(tokenizer), n_positions=64,
                         add_cross_attention=True, is_decoder=True)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = tokenizer.bos_token_id
    config.pad_token_id, config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    torch.manual_seed(0)
    VisionEncoderDecoderModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(directory)


def test_hf_backend_captions_with_a_plain_image_to_text_model(tmp_path, eve_home) -> None:
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    from tasks.caption.backends import CaptionInput

    model_dir = tmp_path / "ved"
    tiny_vision_encoder_decoder(model_dir)
    backend = build_backend(CaptionConfig(backend="hf", model=str(model_dir), max_new_tokens=5))
    assert backend.identity.prompt_template is None  # the model takes no instruction: none is recorded
    assert backend.identity.weights_sha256 == weights_sha256(model_dir)
    images = [png((10, 200, 30)), b"not an image", png((250, 250, 0))]
    outputs = backend.caption_batch([CaptionInput(f"k{i}", data, "png", str(i), None) for i, data in enumerate(images)])
    assert outputs[1].caption is None and "cannot be decoded" in outputs[1].error

    # Independently: the same model called directly, one image at a time.
    from PIL import Image
    import io as _io

    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    processor, tokenizer = AutoImageProcessor.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    for index in (0, 2):
        pixels = processor(images=[Image.open(_io.BytesIO(images[index])).convert("RGB")], return_tensors="pt")
        ids = model.generate(pixel_values=pixels["pixel_values"], max_new_tokens=5, do_sample=False)
        expected = tokenizer.batch_decode(ids, skip_special_tokens=True)[0].strip()
        assert outputs[index].caption == (expected or None)


@pytest.mark.slow
def test_openai_backend_through_eve_serve_survives_restart_and_reruns_from_cache(
    tmp_path, eve_home, tiny_eve_checkpoint, eve_server_factory, monkeypatch, caplog
) -> None:
    monkeypatch.setenv("EVE_TEST_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    # The server requires the key (eve serve's EVE_SERVE_API_KEY), so the backend's header is checked for real.
    server = eve_server_factory(tiny_eve_checkpoint, "--model-id", "tiny-eve", env={"EVE_SERVE_API_KEY": SECRET})
    source = write_images(tmp_path / "in", 10, per_shard=2)
    with ShardWriter(tmp_path / "with-bad", max_items_per_shard=2) as writer:  # + one undecodable image
        writer.write_all(iter_samples(source))
        writer.write(ShardSample("img_bad", {"caption": "broken"}, b"\x89PNG broken", "png"))
    source = tmp_path / "with-bad"
    config = CaptionConfig(
        backend="openai", model="tiny-eve", endpoint_url=f"{server.url}/v1", api_key_env="EVE_TEST_API_KEY",
        max_new_tokens=4, concurrency=2, batch_size=2, max_retries=60,
        backoff_initial_seconds=0.1, backoff_max_seconds=1.0, request_timeout_seconds=30,
    )
    backend = build_backend(config)
    assert backend.identity.weights_sha256 == weights_sha256(tiny_eve_checkpoint)

    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(
        result=caption_dataset(source, tmp_path / "out", config, backend=backend, progress=False)))
    worker.start()
    deadline = time.monotonic() + 120
    while server.health()["requests"]["chat_completions"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    served_before_restart = server.health()["requests"]["chat_completions"]
    server.stop()  # mid-run: in-flight requests finish, the next ones are refused until restart
    time.sleep(1.0)
    server.start()
    worker.join(timeout=300)
    backend.close()

    result = outcome["result"]
    assert 2 <= served_before_restart < 10
    assert backend.retries > 0  # requests were refused while the server was down, and retried
    assert (result.num_samples, result.num_failed) == (11, 1)
    bad = next(sample for sample in iter_samples(tmp_path / "out") if sample.key == "img_bad")
    assert bad.caption is None and bad.meta["caption_provenance"]["error"].startswith("HTTP 400")
    served_after_restart = server.health()["requests"]["chat_completions"]
    # Both server lives did work (requests in flight at the stop finish on the old one, uncounted here).
    assert 1 <= served_after_restart <= 10 - served_before_restart

    # A rerun (a new output, a new backend) is answered from the cache: no completion requests.
    rerun_backend = build_backend(config)
    rerun = caption_dataset(source, tmp_path / "rerun", config, backend=rerun_backend, progress=False)
    rerun_backend.close()
    assert server.health()["requests"]["chat_completions"] == served_after_restart
    # Errors are not cached (they may be transient): only the bad image is asked again, and refused again.
    assert rerun.num_from_cache == 10 and rerun.num_generated == 1
    assert rerun_backend.requests_sent == 2  # GET /models (weights hash) + the bad image
    # Same captions; the hashes differ only because the retried failure has a new provenance time.
    def captions(location):
        return {sample.key: sample.caption for sample in iter_samples(location)}

    assert captions(tmp_path / "rerun") == captions(tmp_path / "out")

    # Without the key the backend stops at once instead of failing every image with a 401.
    monkeypatch.delenv("EVE_TEST_API_KEY")
    with pytest.raises(CaptionBackendError, match=r"HTTP 401.*\$EVE_TEST_API_KEY"):
        build_backend(config)
    assert server.health()["requests"]["unauthorized"] == 1

    # The API key went only into the Authorization header.
    assert SECRET not in caplog.text
    assert SECRET not in server.log_path.read_text()
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes()


def test_openai_backend_fails_clearly_when_the_endpoint_never_answers() -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = CaptionConfig(backend="openai", model="m", endpoint_url=f"http://127.0.0.1:{port}/v1",
                           max_retries=2, backoff_initial_seconds=0.01, backoff_max_seconds=0.02)
    with pytest.raises(CaptionBackendError, match="did not answer after 3 attempts"):
        build_backend(config)
