"""The ``hf`` backend: a local checkpoint directory captions images in batches on this machine.

Two kinds of transformers directories are supported:
- EVE checkpoints (``model_type`` "eve"): prompted with the caption template through the
  ``vicuna_v1`` chat format (``eve_model.generation.VisionTextGenerator``), so a trained EVE can
  re-caption the next version's data;
- prompt-free image-to-text captioners loadable with ``AutoModelForImageTextToText`` plus an image
  processor and tokenizer (``vision-encoder-decoder``, BLIP): ``generate(pixel_values)``. They take
  no instruction, so provenance records no prompt template for them.
Chat VLMs with their own templates (LLaVA, Qwen-VL, ...) are better served by an inference server;
point the ``openai`` backend at it. Undecodable images get a per-image error, not a failed batch.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from tasks.caption.backends.base import CaptionBackend, CaptionBackendError, CaptionInput, CaptionOutput
from tasks.caption.provenance import BackendIdentity, PromptTemplate

PROMPT_FREE_MODEL_TYPES = ("vision-encoder-decoder", "blip")


def _decode_rgb(data: bytes) -> Any:
    """A PIL RGB image, or a ValueError saying why not (pixel limit checked before decoding)."""
    from PIL import Image

    from eve_model.generation import MAX_IMAGE_PIXELS

    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise ValueError(f"{image.width}x{image.height} pixels is over {MAX_IMAGE_PIXELS}")
        return image.convert("RGB")
    except Exception as error:  # PIL raises many types for corrupt data
        raise ValueError(f"image data cannot be decoded: {error}") from error


class _EveCaptioner:
    def __init__(self, model_dir: Path, template: PromptTemplate, device: str) -> None:
        from eve_model.generation import VisionTextGenerator

        self.generator = VisionTextGenerator(model_dir, device=device)
        self.prompt = self.generator.chat_prompt([("user", template.text)], has_image=True)
        self.weights_sha256 = self.generator.weights_sha256

    def generate(self, images: list[bytes], decoding: dict[str, Any]) -> list[str]:
        from eve_model.generation import GenerationRequest

        requests = [
            GenerationRequest(prompt=self.prompt, image=image, max_new_tokens=decoding["max_new_tokens"],
                              temperature=decoding["temperature"], top_p=decoding.get("top_p", 1.0),
                              seed=decoding.get("seed"))
            for image in images
        ]
        return [result.text for result in self.generator.generate(requests)]


class _PromptFreeCaptioner:
    def __init__(self, model_dir: Path, device: str) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        from eve_model.identity import weights_sha256

        self._torch = torch
        self.device = torch.device(device)
        self.image_processor = AutoImageProcessor.from_pretrained(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForImageTextToText.from_pretrained(model_dir).to(self.device).eval()
        self.weights_sha256 = weights_sha256(model_dir)

    def generate(self, images: list[bytes], decoding: dict[str, Any]) -> list[str]:
        pixel_values = self.image_processor(images=[_decode_rgb(image) for image in images],
                                            return_tensors="pt")["pixel_values"].to(self.device)
        sampling: dict[str, Any] = {"do_sample": False}
        if decoding["temperature"] > 0:
            sampling = {"do_sample": True, "temperature": decoding["temperature"], "top_p": decoding.get("top_p", 1.0)}
            if decoding.get("seed") is not None:
                self._torch.manual_seed(decoding["seed"])
        with self._torch.no_grad():
            output = self.model.generate(pixel_values=pixel_values, max_new_tokens=decoding["max_new_tokens"], **sampling)
        return self.tokenizer.batch_decode(output, skip_special_tokens=True)


class HFCaptionBackend(CaptionBackend):
    def __init__(self, model_dir: str | Path, template: PromptTemplate, decoding: dict, device: str = "cpu") -> None:
        model_dir = Path(model_dir)
        config_path = model_dir / "config.json"
        if not config_path.is_file():
            raise CaptionBackendError(f"{model_dir} is not a model directory (no config.json)")
        model_type = json.loads(config_path.read_text()).get("model_type")
        if model_type == "eve":
            self._captioner: Any = _EveCaptioner(model_dir, template, device)
            prompt_ref, prompt_text = template.ref, template.text
        elif model_type in PROMPT_FREE_MODEL_TYPES:
            self._captioner = _PromptFreeCaptioner(model_dir, device)
            prompt_ref = prompt_text = None
        else:
            raise CaptionBackendError(
                f"{model_dir}: model_type {model_type!r} is not supported by the hf backend (EVE or one of "
                f"{PROMPT_FREE_MODEL_TYPES}); serve it with an OpenAI-compatible server and use the openai backend"
            )
        self._decoding = decoding
        self._identity = BackendIdentity(
            backend="hf",
            model_id=str(model_dir.resolve()),
            weights_sha256=self._captioner.weights_sha256,
            prompt_template=prompt_ref,
            prompt_text=prompt_text,
            decoding=decoding,
        )

    @property
    def identity(self) -> BackendIdentity:
        return self._identity

    def caption_batch(self, inputs: list[CaptionInput]) -> list[CaptionOutput]:
        outputs: list[CaptionOutput | None] = [None] * len(inputs)
        usable: list[int] = []
        for position, item in enumerate(inputs):
            if item.image_bytes is None:
                outputs[position] = CaptionOutput(None, "sample has no image")
                continue
            try:
                _decode_rgb(item.image_bytes)
            except ValueError as error:
                outputs[position] = CaptionOutput(None, str(error))
                continue
            usable.append(position)
        if usable:
            texts = self._captioner.generate([inputs[p].image_bytes for p in usable], self._decoding)
            for position, text in zip(usable, texts):
                text = text.strip()
                outputs[position] = CaptionOutput(text or None, None if text else "empty generation")
        return outputs  # type: ignore[return-value]


__all__ = ["HFCaptionBackend", "PROMPT_FREE_MODEL_TYPES"]
