"""EVE v1 pre-processing: any-aspect-ratio images with a validity-mask channel, and the chat templates.

Image geometry (docs/model.md, generalised to any student/teacher cell size): for one image,

1. the *teacher view* follows the LLaVA-1.5 pad protocol: longest side := teacher side T, short side
   snapped up to whole teacher cells (``ceil``), centred on a T x T canvas at a whole-cell offset;
2. the *student view* is the same grid scaled by ``patch_ratio`` in cells and by the student cell size in
   pixels: longest side = ``image_max_side`` (small images are up-scaled), short side = teacher valid cells *
   patch_ratio * student cell. It is centred on an S x S canvas at the matching whole-cell offset, so the
   student grid after ``patch_ratio`` x ``patch_ratio`` pooling equals the teacher's valid grid token for token;
3. both canvases are filled with the mean colour; a 4th channel is 1 on the image and 0 on padding.

Normalisation: the student view is normalised with ``config.image_mean/std`` (CLIP values, padding -> 0);
the teacher view stays in [0, 1] RGB and each teacher normalises with its own statistics
(see ``eve_model.teachers``), so one tensor serves every teacher.

Two pixel protocols (``EveImageProcessor.pixel_protocol``, from ``EveConfig.pixel_protocol``):

- ``"platform"`` (what this platform trains with): both canvases are padded with the exact mean colour, so
  padding normalises to exactly 0, and transparent pixels are composited onto that colour, so they look like
  canvas rather than like whatever RGB a transparent pixel happens to hold (often black);
- ``"upstream"`` (EVE v1's own data code, for released weights; ``eve convert upstream`` writes it): padding is
  ``int(mean * 255)`` per channel (RGB 122, 116, 104 for CLIP's mean), alpha is dropped with
  ``convert("RGB")`` and the short side's whole cells are ``ceil`` in floating point. Normalisation is the
  same in both (float32 ``(x / 255 - mean) / std``, which is what ``CLIPImageProcessor`` computes).

The PEL only reads valid cells, so the protocols differ only where pixels reach a network: the teacher sees
the padding colour, and alpha-heavy images differ everywhere.

Sequence length (``EveProcessor.max_length``): by default it limits the *text* of a sample, counting its
``<image>`` placeholder as one token, and the visual block is expanded after truncation, as upstream truncates
``input_ids`` to ``model_max_length`` before splicing (a sample may then reach ``max_length - 1 +
visual_token_count``: 2,647 tokens for a square 672 px image under 2,048). ``max_length_counts_visual_tokens=True``
makes it a limit on the whole sequence instead (text after the image is cut to fit; a visual block that does
not fit is an error).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image

from .constants import IGNORE_INDEX, IMAGE_PLACEHOLDER
from .geometry import GridGeometry, visual_token_count

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from .configuration_eve import EveConfig

IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
PROCESSOR_FILE = "processor_config.json"
VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
TEMPLATES = ("plain", "vicuna_v1")
PIXEL_PROTOCOLS = ("platform", "upstream")
PixelProtocol = Literal["platform", "upstream"]


class EveInputError(ValueError):
    """A sample cannot be turned into model input; the message names the sample."""


@dataclass(frozen=True)
class ImageLayout:
    """Where one image lands on the student and teacher canvases (all in pixels unless named cells)."""

    student_width: int
    student_height: int
    student_left: int
    student_top: int
    teacher_width: int
    teacher_height: int
    teacher_left: int
    teacher_top: int
    grid_height_cells: int
    """Student visual-token rows h (the PEL emits ``visual_token_count(h, w)`` tokens)."""
    grid_width_cells: int
    """Student visual-token columns w."""


@dataclass
class EveImageProcessor(GridGeometry):
    """Builds the 4-channel student tensor (B, 4, S, S) and teacher tensor (B, 4, T, T) for a batch."""

    patch_size: int = 14
    pool_stride: int = 2
    image_max_side: int = 672
    teacher_image_size: int = 336
    teacher_grid_size: int = 24
    image_mean: list[float] = field(default_factory=lambda: [0.48145466, 0.4578275, 0.40821073])
    image_std: list[float] = field(default_factory=lambda: [0.26862954, 0.26130258, 0.27577711])
    pixel_protocol: PixelProtocol = "platform"
    """``"platform"`` or ``"upstream"`` (EVE v1's padding colour, alpha handling and float32 normalisation);
    see the module docstring."""

    def __post_init__(self) -> None:
        if self.pixel_protocol not in PIXEL_PROTOCOLS:
            raise ValueError(f"unknown pixel_protocol {self.pixel_protocol!r}; expected one of {PIXEL_PROTOCOLS}")

    @classmethod
    def from_eve_config(cls, config: "EveConfig") -> "EveImageProcessor":
        return cls(
            patch_size=config.patch_size,
            pool_stride=config.pool_stride,
            image_max_side=config.image_max_side,
            teacher_image_size=config.teacher_image_size,
            teacher_grid_size=config.teacher_grid_size,
            image_mean=list(config.image_mean),
            image_std=list(config.image_std),
            pixel_protocol=getattr(config, "pixel_protocol", "platform"),
        )

    # ------------------------------------------------------------------------------------------- geometry
    def layout(self, width: int, height: int) -> ImageLayout:
        """Sizes and offsets of an image of ``width`` x ``height`` pixels on both canvases."""
        grid = self.teacher_grid_size
        long_side, short_side = max(width, height), min(width, height)
        if self.pixel_protocol == "upstream":
            # Upstream's expression as it computes it (floating point); it can differ from the exact ceil below
            # by one cell when T * short / long / cell is a whole number that rounds up.
            short_cells = int(math.ceil(self.teacher_image_size * short_side / long_side / self.teacher_cell_px))
        else:
            # ceil(T * short / long / teacher_cell) in integers: the short side covers whole teacher cells.
            short_cells = -(-(self.teacher_image_size * short_side) // (long_side * self.teacher_cell_px))
        short_cells = min(max(short_cells, 1), grid)
        offset_cells = (grid - short_cells) // 2
        student_cell_span = self.patch_ratio * self.student_cell_px  # student pixels per teacher cell
        long_s, short_s, off_s = grid * student_cell_span, short_cells * student_cell_span, offset_cells * student_cell_span
        long_t, short_t, off_t = self.teacher_image_size, short_cells * self.teacher_cell_px, offset_cells * self.teacher_cell_px
        grid_long, grid_short = grid * self.patch_ratio, short_cells * self.patch_ratio
        if width >= height:
            return ImageLayout(long_s, short_s, 0, off_s, long_t, short_t, 0, off_t, grid_short, grid_long)
        return ImageLayout(short_s, long_s, off_s, 0, short_t, long_t, off_t, 0, grid_long, grid_short)

    def num_visual_tokens(self, layout: ImageLayout) -> int:
        """1 class token + h rows of (w patch tokens + 1 separator)."""
        return visual_token_count(layout.grid_height_cells, layout.grid_width_cells)

    # ------------------------------------------------------------------------------------------- decoding
    def to_rgb(self, image: Any, sample_id: str) -> Image.Image:
        """Decode (if bytes) and convert any PIL mode to RGB; raises ``EveInputError`` naming the sample."""
        try:
            if isinstance(image, (bytes, bytearray)):
                image = Image.open(io.BytesIO(image))
            if not isinstance(image, Image.Image):
                raise TypeError(f"expected a PIL image or encoded bytes, got {type(image).__name__}")
            if image.width <= 0 or image.height <= 0:
                raise ValueError(f"zero-size image ({image.width}x{image.height})")
            image.load()
            return self._convert_mode(image)
        except EveInputError:
            raise
        except Exception as error:  # PIL raises many types for corrupt data; the caller needs one
            raise EveInputError(f"sample {sample_id}: unusable image: {error}") from error

    def _convert_mode(self, image: Image.Image) -> Image.Image:
        if image.mode == "RGB":
            return image
        if self.pixel_protocol == "upstream":
            return image.convert("RGB")  # as upstream's data code: alpha dropped, no compositing
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            values = np.asarray(image, dtype=np.float64)
            if image.mode.startswith("I;16"):
                values = values / 257.0
            elif image.mode == "I":
                values = values / 257.0 if values.max(initial=0) > 255 else values
            else:  # float images are usually [0, 1]; otherwise already 8-bit scale
                values = values * 255.0 if values.max(initial=0) <= 1.0 else values
            return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8)).convert("RGB")
        if image.mode == "P":
            image = image.convert("RGBA")
        if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
            # Transparent pixels take the padding colour, so they look like canvas, not like black.
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, self._mean_colour_255() + (255,))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")

    def _mean_colour_255(self) -> tuple[int, int, int]:
        return tuple(int(round(channel * 255)) for channel in self.image_mean)  # type: ignore[return-value]

    def padding_colour(self) -> torch.Tensor:
        """(3,) float32 RGB in [0, 1] of the canvas padding: the exact mean (platform) or upstream's
        ``int(mean * 255) / 255``."""
        if self.pixel_protocol == "upstream":
            return torch.tensor([int(channel * 255) for channel in self.image_mean], dtype=torch.float32) / 255.0
        return torch.tensor(self.image_mean, dtype=torch.float32)

    # --------------------------------------------------------------------------------------------- tensors
    def _canvas(self, image: Image.Image | None, side: int, size: tuple[int, int], offset: tuple[int, int]) -> torch.Tensor:
        """(4, side, side) float: RGB in [0, 1] on the padding-colour canvas plus the validity mask."""
        canvas = torch.empty(4, side, side, dtype=torch.float32)
        canvas[:3] = self.padding_colour().view(3, 1, 1)
        canvas[3] = 0.0
        if image is not None:
            resized = image.resize(size, Image.Resampling.BICUBIC)
            pixels = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
            left, top = offset
            canvas[:3, top : top + size[1], left : left + size[0]] = pixels
            canvas[3, top : top + size[1], left : left + size[0]] = 1.0
        return canvas

    def __call__(self, images: list[Any | None], sample_ids: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Process a batch. ``None`` gives a blank mean-colour image with an all-zero mask.

        Returns ``pixel_values`` (B, 4, S, S) normalised RGB + mask, ``teacher_pixel_values`` (B, 4, T, T)
        [0, 1] RGB + mask, ``has_image`` (B,) bool, ``image_grid_hw`` (B, 2) long student grid (0, 0 if none).
        """
        if sample_ids is None:
            sample_ids = [f"#{index}" for index in range(len(images))]
        if len(sample_ids) != len(images):
            raise ValueError(f"{len(images)} images but {len(sample_ids)} sample ids")
        mean = torch.tensor(self.image_mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.image_std, dtype=torch.float32).view(3, 1, 1)
        student, teacher, has_image, grids = [], [], [], []
        for image, sample_id in zip(images, sample_ids):
            rgb = None if image is None else self.to_rgb(image, sample_id)
            if rgb is None:
                student_view = self._canvas(None, self.image_max_side, (0, 0), (0, 0))
                teacher_view = self._canvas(None, self.teacher_image_size, (0, 0), (0, 0))
                grids.append((0, 0))
            else:
                layout = self.layout(rgb.width, rgb.height)
                student_view = self._canvas(
                    rgb, self.image_max_side, (layout.student_width, layout.student_height),
                    (layout.student_left, layout.student_top),
                )
                teacher_view = self._canvas(
                    rgb, self.teacher_image_size, (layout.teacher_width, layout.teacher_height),
                    (layout.teacher_left, layout.teacher_top),
                )
                grids.append((layout.grid_height_cells, layout.grid_width_cells))
            student_view[:3] = (student_view[:3] - mean) / std
            student.append(student_view)
            teacher.append(teacher_view)
            has_image.append(rgb is not None)
        return {
            "pixel_values": torch.stack(student),
            "teacher_pixel_values": torch.stack(teacher),
            "has_image": torch.tensor(has_image, dtype=torch.bool),
            "image_grid_hw": torch.tensor(grids, dtype=torch.long).view(len(images), 2),
        }

    # ----------------------------------------------------------------------------------------- save / load
    def save_pretrained(self, directory: str | Path) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        payload = {"image_processor_type": "EveImageProcessor", **asdict(self)}
        (path / IMAGE_PROCESSOR_FILE).write_text(json.dumps(payload, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "EveImageProcessor":
        payload = json.loads((Path(directory) / IMAGE_PROCESSOR_FILE).read_text())
        payload.pop("image_processor_type", None)
        return cls(**payload)


class EveProcessor:
    """Turns samples into model batches: ``plain`` (stages 1-2) and ``vicuna_v1`` (stage 3) templates.

    As in HF's LLaVA-style processors, the single ``<image>`` placeholder of a sample is expanded into exactly
    ``visual_token_count(h, w)`` image-token ids (h x w = that image's student grid), so ``input_ids`` has the
    layout the LLM sees and the model fills those positions with the PEL output in one ``masked_scatter``.
    Labels on visual positions are ``IGNORE_INDEX``.

    ``max_length`` limits the text, ``<image>`` counted once, and the visual block is expanded after truncation
    (upstream's rule; the module docstring has the numbers). With ``max_length_counts_visual_tokens`` it limits
    the whole expanded sequence: text after the image is truncated to fit, and a sample whose visual block
    itself does not fit raises ``EveInputError``.
    """

    def __init__(self, image_processor: EveImageProcessor, tokenizer: "PreTrainedTokenizerBase", max_length: int = 2048,
                 max_length_counts_visual_tokens: bool = False):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_length_counts_visual_tokens = max_length_counts_visual_tokens
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {IMAGE_PLACEHOLDER} special token")
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.unk_token_id

    @classmethod
    def from_eve_config(cls, config: "EveConfig", tokenizer: "PreTrainedTokenizerBase | None" = None,
                        max_length: int = 512, max_length_counts_visual_tokens: bool = False) -> "EveProcessor":
        """Processor for ``config``; ``tokenizer`` defaults to the bundled tiny tokenizer."""
        if tokenizer is None:
            from .tokenizer import load_tiny_tokenizer

            tokenizer = load_tiny_tokenizer()
        processor = cls(EveImageProcessor.from_eve_config(config), tokenizer, max_length, max_length_counts_visual_tokens)
        if processor.image_token_id != config.image_token_id:
            raise ValueError(
                f"tokenizer {IMAGE_PLACEHOLDER} id {processor.image_token_id} != config.image_token_id {config.image_token_id}"
            )
        return processor

    # ------------------------------------------------------------------------------------------- templates
    @staticmethod
    def prompt(question: str, template: str = "vicuna_v1", with_image: bool = True) -> str:
        """Generation prompt (without BOS): vicuna_v1 ``{system} USER: <image>\\n{q} ASSISTANT:``;
        plain ``<image>{q}`` (caption continuation)."""
        image = f"{IMAGE_PLACEHOLDER}\n" if with_image else ""
        if template == "vicuna_v1":
            return f"{VICUNA_V1_SYSTEM} USER: {image}{question} ASSISTANT:"
        if template == "plain":
            return f"{IMAGE_PLACEHOLDER if with_image else ''}{question}"
        raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _segments(self, sample: dict, template: str, sample_id: str, has_image: bool) -> list[tuple[str, bool]]:
        """(text, is_target) pieces in order; ``<image>`` appears in text exactly once iff ``has_image``."""
        if template == "plain":
            caption = sample.get("caption")
            if not isinstance(caption, str):
                raise EveInputError(f"sample {sample_id}: template 'plain' needs a string 'caption'")
            if IMAGE_PLACEHOLDER in caption:
                raise EveInputError(f"sample {sample_id}: caption contains the reserved {IMAGE_PLACEHOLDER} string")
            return [(IMAGE_PLACEHOLDER if has_image else "", False), (caption + "\n", True)]
        if template != "vicuna_v1":
            raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")
        conversations = sample.get("conversations")
        if not conversations:
            raise EveInputError(f"sample {sample_id}: template 'vicuna_v1' needs non-empty 'conversations'")
        turns = list(conversations)
        if turns[0].get("from") != "human":  # LLaVA drops a leading assistant turn
            turns = turns[1:]
        placeholder_count = sum(str(turn.get("value", "")).count(IMAGE_PLACEHOLDER) for turn in turns)
        if placeholder_count > 1:
            raise EveInputError(f"sample {sample_id}: {placeholder_count} {IMAGE_PLACEHOLDER} placeholders; one image per sample")
        if placeholder_count == 1 and not has_image:
            raise EveInputError(f"sample {sample_id}: text has {IMAGE_PLACEHOLDER} but the sample has no image")
        segments: list[tuple[str, bool]] = []
        for index, turn in enumerate(turns):
            role, value = turn.get("from"), turn.get("value")
            expected = "human" if index % 2 == 0 else "gpt"
            if role != expected or not isinstance(value, str):
                raise EveInputError(f"sample {sample_id}: turn {index} must be a '{expected}' turn with a string value")
            if role == "human":
                text = value.replace(IMAGE_PLACEHOLDER, "").strip()
                if index == 0 and has_image:
                    text = f"{IMAGE_PLACEHOLDER}\n{text}"
                prefix = f"{VICUNA_V1_SYSTEM} " if index == 0 else ""
                segments.append((f"{prefix}USER: {text} ASSISTANT:", False))
            else:
                segments.append((f" {value}", True))
                segments.append((self.tokenizer.eos_token, True))
        return segments

    def _expand_image_token(self, input_ids: list[int], num_visual_tokens: int, labels: list[int] | None = None
                            ) -> tuple[list[int], list[int] | None]:
        """Replace the one ``<image>`` id by ``num_visual_tokens`` of them (labels there: IGNORE_INDEX)."""
        position = input_ids.index(self.image_token_id)
        input_ids = input_ids[:position] + [self.image_token_id] * num_visual_tokens + input_ids[position + 1 :]
        if labels is not None:
            labels = labels[:position] + [IGNORE_INDEX] * num_visual_tokens + labels[position + 1 :]
        return input_ids, labels

    def _tokenize_sample(self, sample: dict, template: str, sample_id: str, has_image: bool,
                         num_visual_tokens: int) -> tuple[list[int], list[int]]:
        """input_ids and labels of one sample with its visual block expanded, truncated per ``max_length``."""
        input_ids = [self.tokenizer.bos_token_id]
        labels = [IGNORE_INDEX]
        for text, is_target in self._segments(sample, template, sample_id, has_image):
            if text == self.tokenizer.eos_token:
                ids = [self.tokenizer.eos_token_id]
            else:
                ids = self._encode(text)
            input_ids += ids
            labels += ids if is_target else [IGNORE_INDEX] * len(ids)
        placeholders = input_ids.count(self.image_token_id)
        if placeholders != (1 if has_image else 0):
            raise EveInputError(f"sample {sample_id}: expected {int(has_image)} {IMAGE_PLACEHOLDER} token(s), found {placeholders}")
        if not has_image:
            return input_ids[: self.max_length], labels[: self.max_length]
        position = input_ids.index(self.image_token_id)
        if self.max_length_counts_visual_tokens:
            if position + num_visual_tokens > self.max_length:
                raise EveInputError(
                    f"sample {sample_id}: the {num_visual_tokens} visual tokens at position "
                    f"{position} do not fit max_length {self.max_length}"
                )
            input_ids, labels = self._expand_image_token(input_ids, num_visual_tokens, labels)
            return input_ids[: self.max_length], labels[: self.max_length]
        if position >= self.max_length:
            raise EveInputError(
                f"sample {sample_id}: its {IMAGE_PLACEHOLDER} is at text position {position}, past max_length {self.max_length}"
            )
        return self._expand_image_token(input_ids[: self.max_length], num_visual_tokens, labels[: self.max_length])

    def _pad(self, rows: list[list[int]], value: int, left: bool) -> torch.Tensor:
        width = max(len(row) for row in rows)
        padded = [([value] * (width - len(row)) + row) if left else (row + [value] * (width - len(row))) for row in rows]
        return torch.tensor(padded, dtype=torch.long)

    def __call__(self, samples: list[dict], template: str) -> dict[str, torch.Tensor]:
        """Batch for training: right-padded ``input_ids``/``attention_mask``/``labels`` (B, T) with each
        image's visual block expanded in place, plus the image tensors of ``EveImageProcessor.__call__``."""
        if not samples:
            raise ValueError("empty batch")
        sample_ids = [str(sample.get("key", sample.get("id", f"#{index}"))) for index, sample in enumerate(samples)]
        images = self.image_processor([sample.get("image") for sample in samples], sample_ids)
        all_ids, all_labels = [], []
        for index, sample in enumerate(samples):
            has_image = bool(images["has_image"][index])
            grid_h, grid_w = images["image_grid_hw"][index].tolist()
            ids, labels = self._tokenize_sample(sample, template, sample_ids[index], has_image,
                                                visual_token_count(grid_h, grid_w))
            all_ids.append(ids)
            all_labels.append(labels)
        return {
            "input_ids": self._pad(all_ids, self.pad_token_id, left=False),
            "attention_mask": self._pad([[1] * len(ids) for ids in all_ids], 0, left=False),
            "labels": self._pad(all_labels, IGNORE_INDEX, left=False),
            **images,
        }

    def for_generation(self, images: list[Any | None], prompts: list[str]) -> dict[str, torch.Tensor]:
        """Left-padded batch for ``model.generate``: ``input_ids``/``attention_mask`` (B, T) with each image's
        visual block expanded in place, plus the image tensors. Each prompt holds one ``<image>`` iff its image
        is given; prompts are not truncated."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        sample_ids = [f"#{index}" for index in range(len(prompts))]
        pixels = self.image_processor(images, sample_ids)
        rows = []
        for index, prompt in enumerate(prompts):
            ids = [self.tokenizer.bos_token_id] + self._encode(prompt)
            expected = int(bool(pixels["has_image"][index]))
            if ids.count(self.image_token_id) != expected:
                raise EveInputError(
                    f"sample {sample_ids[index]}: prompt has {ids.count(self.image_token_id)} {IMAGE_PLACEHOLDER}, expected {expected}"
                )
            if expected:
                grid_h, grid_w = pixels["image_grid_hw"][index].tolist()
                ids, _ = self._expand_image_token(ids, visual_token_count(grid_h, grid_w))
            rows.append(ids)
        return {
            "input_ids": self._pad(rows, self.pad_token_id, left=True),
            "attention_mask": self._pad([[1] * len(row) for row in rows], 0, left=True),
            **pixels,
        }

    def decode(self, ids: Any) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def batch_decode(self, sequences: Any) -> list[str]:
        return [self.decode(row) for row in sequences]

    # ----------------------------------------------------------------------------------------- save / load
    _auto_class = "AutoProcessor"
    """The Auto class named in ``processor_config.json``'s ``auto_map``: a saved processor carries this file, so
    ``AutoProcessor.from_pretrained(dir, trust_remote_code=True)`` gives an ``EveProcessor`` without this package."""

    @classmethod
    def register_for_auto_class(cls, auto_class: str = "AutoProcessor") -> None:
        """Called by transformers' ``AutoProcessor`` on a processor class it loaded as remote code."""
        cls._auto_class = auto_class

    def save_pretrained(self, directory: str | Path, **_unused: Any) -> None:
        """Image processor, tokenizer and ``processor_config.json`` (settings, ``auto_map``), plus this file and the
        files it imports relatively (transformers' ``custom_object_save``)."""
        from transformers.dynamic_module_utils import custom_object_save

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.image_processor.save_pretrained(path)
        self.tokenizer.save_pretrained(str(path))
        settings: dict[str, Any] = {
            "processor_class": type(self).__name__,
            "max_length": self.max_length,
            "max_length_counts_visual_tokens": self.max_length_counts_visual_tokens,
        }
        custom_object_save(self, path, config=settings)
        (path / PROCESSOR_FILE).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, trust_remote_code: bool | None = None,
                        **_unused: Any) -> "EveProcessor":
        """Load a saved processor from a local directory. ``trust_remote_code`` goes on to ``AutoTokenizer`` (which
        reads ``config.json``, whose ``auto_map`` names this code); other ``AutoProcessor`` keyword arguments are
        ignored: checkpoints are local directories here."""
        from transformers import AutoTokenizer

        path = Path(pretrained_model_name_or_path)
        settings = json.loads((path / PROCESSOR_FILE).read_text())
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        return cls(EveImageProcessor.from_pretrained(path), tokenizer, settings["max_length"],
                   settings.get("max_length_counts_visual_tokens", False))


__all__ = ["EveImageProcessor", "EveProcessor", "EveInputError", "ImageLayout", "VICUNA_V1_SYSTEM"]
