"""Batched image+text -> text generation over a local EVE checkpoint (the model side of ``eve serve``).

``VisionTextGenerator`` loads ``EveForCausalLM`` + ``EveProcessor`` from a checkpoint directory, builds
``vicuna_v1`` chat prompts, prepares images and runs one left-padded ``generate`` per batch of
``GenerationRequest``s. ``BatchingEngine`` is one thread that forms those batches from a bounded
queue. The generator is also the engine of the ``hf`` caption backend; the HTTP app is
``eve_model.server``.

Bounds, so that no request can take the server from the others:

- **Images** (``prepare_image``) are refused from their header, before a pixel is decoded, unless
  their format is one of ``ACCEPTED_IMAGE_FORMATS`` (what the OpenAI API accepts, plus BMP), their mode
  one of ``ACCEPTED_IMAGE_MODES`` and their size at most ``max_image_pixels``. Each image is decoded
  exactly once, under a process-wide decode-memory budget (``DecodeBudget``: concurrent decodes wait
  for memory instead of adding up), and is immediately reduced to the size the model sees, so a
  queued request holds at most a model-sized image.
- **Prompts** are counted in tokens as the model sees them (visual block included):
  ``prompt_tokens`` lets the server refuse a prompt longer than the model's context
  (``context_tokens``) before it is queued.
- **The queue** holds at most ``max_queued_requests``; ``submit`` raises ``QueueFullError`` (with a
  retry-after estimate) beyond that.
- **Batches** group requests with the same sampling settings, oldest first, within a prefill token
  budget (``max_batch_prefill_tokens``, as TGI's option of that name): a batch's rows are padded to
  its longest prompt, so rows x longest prompt is what its prefill computes. A request whose prompt
  would push a batch past the budget waits for the next batch (it heads that one, so nothing
  starves), and a prompt longer than the budget runs alone: a long prefill never holds short
  requests for longer than a budget's worth of prefill, while prompts of similar length still share
  one decode loop (on a CPU, where decode steps dominate, splitting them would cost more than the
  padding). Within a batch each row stops on its own (its own ``max_new_tokens``, end of sequence,
  or cancellation) and its result is delivered at that moment, not when the longest row ends. A cancelled request (``GenerationRequest.cancel``: its client is
  gone) is dropped from the queue, or stops generating at the next token; a batch whose rows are all
  cancelled stops.

Sampling with a temperature below ``GREEDY_TEMPERATURE`` is greedy decoding (as in vLLM): dividing
logits by 1e-300 overflows to inf/NaN, and no sampler is meaningfully different from argmax there.
"""

from __future__ import annotations

import io
import json
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eve_model.constants import IMAGE_PLACEHOLDER
from eve_model.identity import weights_sha256

MAX_IMAGE_PIXELS = 50_000_000
"""Images with more pixels are refused before decoding: 50 megapixels covers a 48-megapixel phone
photo; bombs declare far more (a 40,000 x 40,000 PNG of a few hundred bytes is 1,600 megapixels)."""

DEFAULT_DECODE_BUDGET_BYTES = 1024 * 1024 * 1024
"""Decode memory all concurrent image decodes share (``DecodeBudget``): 1 GiB is ~6 of the largest
accepted images at once as 8-bit RGB."""

ACCEPTED_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
"""Formats decoded; others (TIFF, PSD, ...) are refused from the header. TIFF in particular can
declare float or 32-bit samples and huge canvases in a few hundred bytes."""

ACCEPTED_IMAGE_MODES = {
    "1": 1, "L": 1, "P": 1, "RGB": 3, "RGBA": 4, "LA": 2, "PA": 2, "CMYK": 4, "YCbCr": 3,
    "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2,
}
"""Decoded modes and their bytes per pixel. 32-bit integer ("I") and float ("F") images are refused:
they take 4 bytes per pixel and have no value range the file defines."""

GREEDY_TEMPERATURE = 1e-5
"""Temperatures below this decode greedily (vLLM's threshold)."""


class ImageInputError(ValueError):
    """An image that cannot be decoded or used (a client error)."""


class QueueFullError(RuntimeError):
    """The engine's queue is at its bound; ``retry_after_seconds`` estimates when it will have room."""

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class GenerationCancelled(Exception):
    """The request was cancelled (its client went away) before it finished."""


@dataclass
class PreparedImage:
    """An image decoded once, converted to RGB and reduced to the size the model sees."""

    image: Any
    """PIL RGB image at the student canvas size of its layout (what the processor would resize to)."""
    source_size: tuple[int, int]
    """Width and height of the image as sent."""
    visual_tokens: int
    """Positions its visual block takes in the prompt."""


@dataclass
class GenerationRequest:
    """One prompt to complete. ``image`` is encoded bytes or a ``PreparedImage``; ``prompt`` already
    holds the placeholder."""

    prompt: str
    image: bytes | PreparedImage | None = None
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False
    """Generate ``max_new_tokens`` even past the end-of-sequence token (load tests, as in vLLM)."""
    prompt_tokens: int | None = None
    """Tokens of the prompt as the model sees it (``VisionTextGenerator.prompt_tokens``); batching
    groups by it. Computed by the engine when not given."""
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self) -> None:
        """Stop working on this request: it leaves the queue, or stops at its next token."""
        self.cancelled.set()

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    def sampling_key(self) -> tuple:
        """Requests batch together only with equal sampling settings (all greedy ones are equal)."""
        return ("greedy",) if self.greedy else ("sample", self.temperature, self.top_p, self.seed)


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    """Prompt tokens as the text has them: the visual block counts as its one ``<image>`` placeholder."""
    completion_tokens: int
    finish_reason: str
    """``stop`` (end of sequence), ``length`` (``max_new_tokens``) or ``cancelled``."""


class DecodeBudget:
    """Bytes of decode memory shared by concurrent image decodes (a counting semaphore in bytes)."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._available = capacity_bytes
        self._condition = threading.Condition()

    def acquire(self, amount: int, timeout_seconds: float) -> bool:
        """Wait until ``amount`` bytes are free and take them; False on timeout."""
        if amount > self.capacity_bytes:
            raise ImageInputError(
                f"image needs about {amount / 2**20:.0f} MiB to decode, over the server's decode budget "
                f"of {self.capacity_bytes / 2**20:.0f} MiB"
            )
        with self._condition:
            if not self._condition.wait_for(lambda: self._available >= amount, timeout=timeout_seconds):
                return False
            self._available -= amount
            return True

    def release(self, amount: int) -> None:
        with self._condition:
            self._available += amount
            self._condition.notify_all()

    @property
    def in_use_bytes(self) -> int:
        with self._condition:
            return self.capacity_bytes - self._available


def decode_bytes_estimate(width: int, height: int, mode: str) -> int:
    """Peak bytes to decode an image of this size and mode and convert it to RGB: the decoded buffer,
    plus the RGB copy (plus the RGBA copies of alpha compositing when it has transparency)."""
    per_pixel = ACCEPTED_IMAGE_MODES.get(mode, 4)
    conversion = 12 if mode in ("RGBA", "LA", "PA", "P") else 3
    return width * height * (per_pixel + conversion)


class VisionTextGenerator:
    """Batched image+text -> text generation over a local checkpoint directory.

    EVE checkpoints (``config.json`` model_type "eve") load with ``EveForCausalLM`` and
    ``EveProcessor``; prompts use the ``vicuna_v1`` template the SFT stage trains on.
    """

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        decode_budget: DecodeBudget | None = None,
        decode_wait_seconds: float = 60.0,
    ) -> None:
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
        self.max_image_pixels = max_image_pixels
        self.decode_budget = decode_budget or DecodeBudget(DEFAULT_DECODE_BUDGET_BYTES)
        self.decode_wait_seconds = decode_wait_seconds

    @property
    def context_tokens(self) -> int:
        """Longest sequence (prompt with its visual block + generated tokens) the model takes."""
        return int(self.model.config.text_config.max_position_embeddings)

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

    # ---------------------------------------------------------------------------------------- counting

    def text_tokens(self, prompt: str) -> int:
        """Tokens of the prompt text (BOS included; an ``<image>`` placeholder counts as one)."""
        return 1 + len(self.processor.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def prompt_tokens(self, prompt: str, image: PreparedImage | None) -> int:
        """Positions the prompt takes in the model: text tokens with the placeholder expanded."""
        return self.text_tokens(prompt) + (image.visual_tokens - 1 if image is not None else 0)

    def visual_tokens_for(self, width: int, height: int) -> int:
        """Visual-block positions of an image of ``width`` x ``height`` (from its header, before decoding)."""
        from eve_model.geometry import visual_token_count

        layout = self.processor.image_processor.layout(width, height)
        return visual_token_count(layout.grid_height_cells, layout.grid_width_cells)

    # ------------------------------------------------------------------------------------------ images

    def open_image_header(self, data: bytes) -> Any:
        """The image opened from its header only, after the checks that need no decoding (format, mode,
        declared size); raises ``ImageInputError`` saying which one failed."""
        from PIL import Image

        with _pillow_guard_off():
            try:
                image = Image.open(io.BytesIO(data))  # reads the header only
            except Exception as error:  # PIL raises many types for corrupt data
                raise ImageInputError(f"image data cannot be decoded: {error}") from error
        if image.format not in ACCEPTED_IMAGE_FORMATS:
            raise ImageInputError(f"image format {image.format} is not accepted (accepted: {', '.join(ACCEPTED_IMAGE_FORMATS)})")
        if image.mode not in ACCEPTED_IMAGE_MODES:
            raise ImageInputError(f"image mode {image.mode!r} is not accepted (8- and 16-bit images only)")
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageInputError(f"image declares an empty {width}x{height} canvas")
        # Checked before decoding, so a decompression bomb never allocates its pixels.
        if width * height > self.max_image_pixels:
            raise ImageInputError(
                f"image of {width}x{height} = {width * height:,} pixels is over the limit of {self.max_image_pixels:,} pixels"
            )
        return image

    @staticmethod
    def exif_orientation(image: Any) -> int:
        """The EXIF orientation (1-8) from the header; 1 when absent or unreadable."""
        try:
            value = image.getexif().get(0x0112, 1)
        except Exception:  # noqa: BLE001 - a broken EXIF block is not a broken image
            return 1
        return value if isinstance(value, int) and 1 <= value <= 8 else 1

    def header_visual_tokens(self, image: Any) -> int:
        """Visual-block positions of an opened (not decoded) image, as the model will see it upright."""
        width, height = image.size
        if self.exif_orientation(image) in (5, 6, 7, 8):
            width, height = height, width
        return self.visual_tokens_for(width, height)

    def prepare_image(self, data: bytes | PreparedImage) -> PreparedImage:
        """Check, decode once (within the decode budget), turn upright (EXIF orientation, as ingest
        stores training images), convert to RGB and reduce to the model's size."""
        if isinstance(data, PreparedImage):
            return data
        from PIL import Image, ImageOps

        image = self.open_image_header(data)
        width, height = image.size
        orientation = self.exif_orientation(image)
        cost = decode_bytes_estimate(width, height, image.mode)
        if not self.decode_budget.acquire(cost, self.decode_wait_seconds):
            raise ImageInputError(f"the server is decoding too many images; try again (waited {self.decode_wait_seconds:.0f} s)")
        try:
            try:
                if orientation != 1:
                    image = ImageOps.exif_transpose(image)  # decodes once, upright
                rgb = self.processor.image_processor.to_rgb(image, "request")  # the one decode otherwise
            except ValueError as error:
                raise ImageInputError(f"image data cannot be decoded: {error}") from error
            except Exception as error:  # noqa: BLE001 - hostile bytes fail in many ways inside PIL
                raise ImageInputError(f"image data cannot be decoded: {type(error).__name__}: {error}") from error
            layout = self.processor.image_processor.layout(rgb.width, rgb.height)
            size = (layout.student_width, layout.student_height)
            # The processor resizes to exactly this size; doing it now keeps only a model-sized image.
            reduced = rgb.resize(size, Image.Resampling.BICUBIC) if rgb.size != size else rgb.copy()
            visual_tokens = self.visual_tokens_for(rgb.width, rgb.height)
            del rgb, image
        finally:
            self.decode_budget.release(cost)
        return PreparedImage(reduced, (width, height), visual_tokens)

    # -------------------------------------------------------------------------------------- generation

    def generate(
        self,
        requests: list[GenerationRequest],
        on_finished: Callable[[int, GenerationResult], None] | None = None,
    ) -> list[GenerationResult]:
        """Complete a batch; requests must share sampling settings (``sampling_key``). Output order =
        input order. ``on_finished(index, result)`` is called for each row the moment it finishes."""
        torch = self._torch
        images = [self.prepare_image(r.image) if r.image is not None else None for r in requests]
        batch = self.processor.for_generation([image.image if image else None for image in images],
                                              [r.prompt for r in requests])
        batch = {name: value.to(self.device) for name, value in batch.items()}
        first = requests[0]
        sampling: dict[str, Any] = {"do_sample": False}
        if not first.greedy:
            sampling = {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p}
            if first.seed is not None:
                torch.manual_seed(first.seed)
        # Prompt tokens as the text has them: the visual block counts as its one <image> placeholder.
        visual_block = (batch["input_ids"] == self.processor.image_token_id).sum(dim=1)
        prompt_lengths = (batch["attention_mask"].sum(dim=1) - visual_block + (visual_block > 0).long()).tolist()
        rows = _RowStopper(self, requests, prompt_lengths, on_finished)
        from transformers import StoppingCriteriaList

        with torch.inference_mode():
            output = self.model.generate(
                **batch, max_new_tokens=max(r.max_new_tokens for r in requests), eos_token_id=None,
                stopping_criteria=StoppingCriteriaList([rows]), **sampling,
            )  # (B, new); each row's end is decided by _RowStopper, not by a shared eos
        return rows.finish(output)

    def _result(self, request: GenerationRequest, tokens: list[int], prompt_tokens: int, cancelled: bool) -> GenerationResult:
        tokens = tokens[: request.max_new_tokens]
        eos_id = self.processor.tokenizer.eos_token_id
        finish = "cancelled" if cancelled else "length"
        if not request.ignore_eos and eos_id in tokens:
            tokens, finish = tokens[: tokens.index(eos_id)], "stop"
        return GenerationResult(self.processor.decode(tokens), int(prompt_tokens), len(tokens), finish)


class _RowStopper:
    """A ``StoppingCriteria`` that ends each row on its own (its max_new_tokens, end of sequence unless
    ``ignore_eos``, or cancellation) and hands its result over the moment it ends."""

    def __init__(self, generator: VisionTextGenerator, requests: list[GenerationRequest], prompt_lengths: list[int],
                 on_finished: Callable[[int, GenerationResult], None] | None) -> None:
        self.generator, self.requests, self.prompt_lengths = generator, requests, prompt_lengths
        self.on_finished = on_finished
        self.eos_id = generator.processor.tokenizer.eos_token_id
        self.results: list[GenerationResult | None] = [None] * len(requests)

    def __call__(self, input_ids, scores, **kwargs) -> Any:
        torch = self.generator._torch
        length = input_ids.shape[1]
        last = input_ids[:, -1].tolist() if length else [None] * len(self.requests)
        done = []
        for index, request in enumerate(self.requests):
            if self.results[index] is None:
                cancelled = request.cancelled.is_set()
                if cancelled or length >= request.max_new_tokens or (not request.ignore_eos and last[index] == self.eos_id):
                    self._finish(index, input_ids[index, :length].tolist(), cancelled)
            done.append(self.results[index] is not None)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _finish(self, index: int, tokens: list[int], cancelled: bool) -> None:
        result = self.generator._result(self.requests[index], tokens, self.prompt_lengths[index], cancelled)
        self.results[index] = result
        if self.on_finished is not None:
            self.on_finished(index, result)

    def finish(self, output) -> list[GenerationResult]:
        """Results of every row; rows still open when ``generate`` returned end here."""
        for index, row in enumerate(output.tolist()):
            if self.results[index] is None:
                self._finish(index, row, self.requests[index].cancelled.is_set())
        return list(self.results)  # type: ignore[arg-type]


class _pillow_guard_off:
    """Pillow's global pixel guard set aside while a header is read (nothing is decoded): the server's
    own limit, checked right after, is the one that counts and its message names the size."""

    _lock = threading.Lock()

    def __enter__(self) -> None:
        from PIL import Image

        self._lock.acquire()
        self._previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None

    def __exit__(self, *exc: Any) -> None:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = self._previous
        self._lock.release()


# ------------------------------------------------------------------------------------------- engine


DEFAULT_MAX_BATCH_PREFILL_TOKENS = 4096
"""Prefill budget of a batch (rows x longest prompt); TGI's default for the same option."""


@dataclass
class _Job:
    request: GenerationRequest
    future: Future
    prompt_tokens: int
    enqueued_at: float


def _resolve(future: Future, result: GenerationResult | None = None, error: BaseException | None = None) -> None:
    """Set a future once; a future cancelled by its waiter (the client left) is left alone."""
    if future.done():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


class BatchingEngine:
    """One thread that turns a bounded queue into batches for ``VisionTextGenerator.generate``."""

    def __init__(
        self,
        generator: VisionTextGenerator,
        max_batch_size: int = 8,
        batch_window_ms: float = 5.0,
        max_queued_requests: int = 64,
        max_batch_prefill_tokens: int = DEFAULT_MAX_BATCH_PREFILL_TOKENS,
        batch_observer: Callable[[list[GenerationRequest]], None] | None = None,
    ) -> None:
        self.generator = generator
        self.max_batch_size = max_batch_size
        self.max_batch_prefill_tokens = max_batch_prefill_tokens
        self.batch_window_seconds = batch_window_ms / 1000
        self.max_queued_requests = max_queued_requests
        self.batch_observer = batch_observer
        """Called with each batch's requests before it runs (tests, metrics)."""
        self._pending: list[_Job] = []
        self._condition = threading.Condition()
        self._closed = False
        self.running = 0
        """Requests in the batch being generated now."""
        self.generated_tokens = 0
        """Tokens generated so far, for every request (cancelled ones included, up to where they stopped)."""
        self.cancelled = 0
        """Requests that were cancelled (dropped from the queue or stopped mid-generation)."""
        self._seconds_per_batch = 1.0
        self._thread = threading.Thread(target=self._run, name="eve-generate", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        with self._condition:
            return sum(not job.request.cancelled.is_set() for job in self._pending)

    def submit(self, request: GenerationRequest) -> Future:
        """Queue ``request``; raises ``QueueFullError`` when ``max_queued_requests`` are waiting."""
        if request.prompt_tokens is None:
            image = self.generator.prepare_image(request.image) if request.image is not None else None
            request.image = image
            request.prompt_tokens = self.generator.prompt_tokens(request.prompt, image)
        future: Future = Future()
        with self._condition:
            self._drop_cancelled()
            if len(self._pending) >= self.max_queued_requests:
                raise QueueFullError(
                    f"the server's queue is full ({self.max_queued_requests} requests waiting); retry later",
                    self.retry_after_seconds(),
                )
            self._pending.append(_Job(request, future, request.prompt_tokens, time.monotonic()))
            self._condition.notify_all()
        return future

    def retry_after_seconds(self) -> int:
        """Seconds until the queue should have room: the waiting batches times the recent batch time."""
        batches_ahead = math.ceil(len(self._pending) / self.max_batch_size) + (1 if self.running else 0)
        return max(1, min(60, math.ceil(batches_ahead * self._seconds_per_batch)))

    def close(self) -> None:
        with self._condition:
            self._closed = True
            for job in self._pending:
                _resolve(job.future, error=GenerationCancelled("the server is shutting down"))
            self._pending.clear()
            self._condition.notify_all()
        self._thread.join(timeout=10)

    def _drop_cancelled(self) -> None:
        kept = []
        for job in self._pending:
            if job.request.cancelled.is_set():
                self.cancelled += 1
                _resolve(job.future, error=GenerationCancelled("cancelled while queued"))
            else:
                kept.append(job)
        self._pending = kept

    def _next_batch(self) -> list[_Job] | None:
        """Wait for work, then take the oldest request and, in order, the requests that may share its
        batch: same sampling settings, and the padded prefill (rows x longest prompt) within budget."""
        with self._condition:
            while True:
                self._drop_cancelled()
                if self._closed:
                    return None
                if self._pending:
                    break
                self._condition.wait()
            if len(self._pending) < self.max_batch_size and self.batch_window_seconds > 0:
                deadline = time.monotonic() + self.batch_window_seconds
                while len(self._pending) < self.max_batch_size and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._condition.wait(remaining)
                self._drop_cancelled()
                if not self._pending:
                    return []
            head = self._pending[0]
            batch, longest = [head], head.prompt_tokens
            for job in self._pending[1:]:
                if len(batch) == self.max_batch_size:
                    break
                padded_prefill = max(longest, job.prompt_tokens) * (len(batch) + 1)
                if job.request.sampling_key() == head.request.sampling_key() and padded_prefill <= self.max_batch_prefill_tokens:
                    batch.append(job)
                    longest = max(longest, job.prompt_tokens)
            taken = {id(job) for job in batch}
            self._pending = [job for job in self._pending if id(job) not in taken]
            self.running = len(batch)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if not batch:
                continue
            started = time.monotonic()
            self._run_batch(batch)
            self._seconds_per_batch = 0.7 * self._seconds_per_batch + 0.3 * (time.monotonic() - started)
            self.running = 0

    def _account(self, job: _Job, result: GenerationResult) -> None:
        self.generated_tokens += result.completion_tokens
        if result.finish_reason == "cancelled":
            self.cancelled += 1
            _resolve(job.future, error=GenerationCancelled("cancelled while generating"))
        else:
            _resolve(job.future, result)

    def _run_batch(self, batch: list[_Job]) -> None:
        if self.batch_observer is not None:
            self.batch_observer([job.request for job in batch])
        settled: set[int] = set()

        def finished(index: int, result: GenerationResult) -> None:
            settled.add(index)
            self._account(batch[index], result)

        try:
            self.generator.generate([job.request for job in batch], on_finished=finished)
        except Exception as error:  # noqa: BLE001 - a bad request must not poison the batch
            unsettled = [job for index, job in enumerate(batch) if index not in settled]
            if len(batch) == 1:
                _resolve(batch[0].future, error=error)
                return
            for job in unsettled:  # retry one by one, so only the offending request fails
                self._run_batch([job])


__all__ = [
    "ACCEPTED_IMAGE_FORMATS",
    "ACCEPTED_IMAGE_MODES",
    "BatchingEngine",
    "DEFAULT_MAX_BATCH_PREFILL_TOKENS",
    "DecodeBudget",
    "GREEDY_TEMPERATURE",
    "GenerationCancelled",
    "GenerationRequest",
    "GenerationResult",
    "ImageInputError",
    "MAX_IMAGE_PIXELS",
    "PreparedImage",
    "QueueFullError",
    "VisionTextGenerator",
    "decode_bytes_estimate",
]
