"""Batched image+text -> text generation over a local EVE checkpoint (the model side of ``eve serve``).

``VisionTextGenerator`` loads ``EveForCausalLM`` + ``EveProcessor`` from a checkpoint directory, builds
``vicuna_v1`` chat prompts and runs one left-padded ``generate`` per batch of ``GenerationRequest``s.
``BatchingEngine`` is one thread that collects what arrives within ``batch_window_ms`` (up to
``max_batch_size``) and runs one ``generate`` per group of equal sampling settings. The generator is also
the engine of the ``hf`` caption backend; the HTTP app is ``eve_model.server``.
"""

from __future__ import annotations

import io
import json
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eve_model.constants import IMAGE_PLACEHOLDER
from eve_model.identity import weights_sha256

MAX_IMAGE_PIXELS = 64_000_000
"""Images with more pixels are refused before decoding (decompression bombs)."""


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
        # Prompt tokens as the text has them: the visual block counts as its one <image> placeholder.
        visual_block = (batch["input_ids"] == self.processor.image_token_id).sum(dim=1)
        prompt_lengths = (batch["attention_mask"].sum(dim=1) - visual_block + (visual_block > 0).long()).tolist()
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


__all__ = [
    "BatchingEngine",
    "GenerationRequest",
    "GenerationResult",
    "ImageInputError",
    "MAX_IMAGE_PIXELS",
    "VisionTextGenerator",
]
