"""Configuration of EVE v1 (encoder-free VLM, arXiv 2406.11832): a Llama decoder plus the Patch Embedding
Layer (PEL, inference) and the Patch Aligning Layer (PAL, training only) with its frozen vision teacher.

Geometry (docs/model.md, generalised): one *student cell* is ``patch_size * pool_stride`` pixels (one LLM
visual token); one *teacher cell* is ``teacher_image_size / teacher_grid_size`` pixels (one teacher
feature). ``patch_ratio = image_max_side / student_cell_px / teacher_grid_size`` must be a positive integer:
the student grid equals the teacher's valid grid times ``patch_ratio``, and the PAL average-pools the student
grid by ``patch_ratio`` to match the teacher token for token.
"""

from __future__ import annotations

from dataclasses import field
from typing import Literal

from transformers import LlamaConfig, PretrainedConfig

from .geometry import GridGeometry

CLIP_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]

TeacherKind = Literal["efficientnet_lite0", "clip"]


class EveConfig(GridGeometry, PretrainedConfig):
    """EVE v1 configuration. Defaults are the paper's EVE-7B values (see :meth:`eve_7b`)."""

    model_type = "eve"
    sub_configs_defaults = {"text_config": LlamaConfig}

    text_config: dict | PretrainedConfig | None = None
    """The Llama decoder (Vicuna-7B-v1.5 for EVE-7B)."""

    image_token_id: int = 32000
    """Id of the ``<image>`` token: ``EveProcessor`` repeats it once per visual token in ``input_ids`` and the
    model fills those positions with the PEL output, masking the id out of the embedding lookup, so it may lie
    outside the LLM vocabulary (Vicuna: added token 32000, vocab stays 32000)."""

    patch_size: int = 14
    """PEL patchify convolution kernel = stride, in pixels."""

    pool_stride: int = 2
    """Side of the non-overlapping window that the PEL local cross-attention pools (CA1)."""

    pel_width: int = 1024
    """Channel width inside the PEL (conv output, CA1, CA2, class and separator embeddings)."""

    pel_num_heads: int = 8
    """Attention heads of the PEL cross-attentions CA1 and CA2."""

    attention_full_width_scale: bool = True
    """Scale PEL and PAL attention logits by ``width**-0.5`` (the original code's quirk, kept so its weights
    load) instead of the usual ``head_dim**-0.5`` (used by the tiny presets)."""

    projector_hidden_size: int | None = None
    """Hidden width of the 2-layer GELU projector PEL -> LLM; ``None`` = the LLM hidden size (paper)."""

    image_max_side: int = 672
    """Longest image side in pixels after resizing (672 EVE-7B, 1344 EVE-7B-HD); small images are up-scaled."""

    image_mean: list[float] = field(default_factory=lambda: list(CLIP_IMAGE_MEAN))
    """Per-channel RGB mean in [0, 1] used to normalise the student view and as the padding colour of both views."""

    image_std: list[float] = field(default_factory=lambda: list(CLIP_IMAGE_STD))
    """Per-channel RGB standard deviation used to normalise the student view."""

    pixel_protocol: str = "platform"
    """How images become canvases (``EveImageProcessor``): ``"platform"`` (exact mean-colour padding, alpha
    composited onto it; what this platform trains with) or ``"upstream"`` (EVE v1's ``int(mean * 255)``
    padding and ``convert("RGB")``; set by ``eve convert upstream`` so released weights see what they were
    trained on). docs/model.md, "Departures from the upstream code"."""

    teacher_kind: str = "clip"
    """Frozen vision teacher of the PAL: ``"efficientnet_lite0"`` (bundled pretrained weights) or ``"clip"``."""

    teacher_path: str | None = None
    """Local directory of a HF ``CLIPVisionModel`` (teacher_kind ``"clip"``); unused for EfficientNet-Lite0."""

    teacher_select_layer: int = -2
    """Hidden-state index of the CLIP teacher whose patch tokens are the targets (-2 = penultimate block)."""

    teacher_feature_dim: int = 1024
    """Channel width of the teacher features (1024 CLIP ViT-L, 1280 EfficientNet-Lite0)."""

    teacher_image_size: int = 336
    """Side in pixels of the square teacher canvas (LLaVA-1.5 pad protocol)."""

    teacher_grid_size: int = 24
    """Side of the teacher feature grid (24 for ViT-L/14 at 336 px; EfficientNet-Lite0: side / 32, 3 at 96 px)."""

    alignment_depth_interval: int = 4
    """The PAL reads LLM depths ``L, L - interval, ..., 0`` (0 = the decoder input); ``L`` = number of layers."""

    alignment_width: int = 1024
    """Width of the per-depth PAL projections and of the depth cross-attention."""

    alignment_num_heads: int = 8
    """Attention heads of the PAL depth cross-attention."""

    alignment_loss_weight: float = 1.0
    """Weight of the PAL loss in ``loss = CE + weight * PAL`` (1.0 in all three stages of the paper)."""

    tie_word_embeddings: bool = False
    """EVE keeps the Llama input embedding and ``lm_head`` separate."""

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.projector_hidden_size is None:
            self.projector_hidden_size = self.text_config.hidden_size
        self.validate_geometry()

    # ----------------------------------------------------------------------------------------------- geometry
    @property
    def alignment_depths(self) -> list[int]:
        """LLM depths read by the PAL, last first: ``L, L - interval, ..., 0`` (query = first entry)."""
        num_layers = self.text_config.num_hidden_layers
        return list(range(num_layers, -1, -self.alignment_depth_interval))

    def validate_geometry(self) -> None:
        """Raise ``ValueError`` when student and teacher grids cannot correspond token for token."""
        problems = []
        if self.image_max_side % self.student_cell_px:
            problems.append(f"image_max_side {self.image_max_side} is not a multiple of patch*pool {self.student_cell_px}")
        if self.teacher_image_size % self.teacher_grid_size:
            problems.append(f"teacher_image_size {self.teacher_image_size} is not a multiple of grid {self.teacher_grid_size}")
        if self.student_max_grid % self.teacher_grid_size or self.patch_ratio < 1:
            problems.append(
                f"student grid {self.student_max_grid} is not a positive multiple of teacher grid {self.teacher_grid_size}"
            )
        if self.pixel_protocol not in ("platform", "upstream"):
            problems.append(f"unknown pixel_protocol {self.pixel_protocol!r}; expected 'platform' or 'upstream'")
        if self.teacher_kind not in ("efficientnet_lite0", "clip"):
            problems.append(f"unknown teacher_kind {self.teacher_kind!r}")
        if self.text_config.num_hidden_layers % self.alignment_depth_interval:
            problems.append(
                f"num_hidden_layers {self.text_config.num_hidden_layers} is not a multiple of "
                f"alignment_depth_interval {self.alignment_depth_interval} (depth 0 must be included)"
            )
        if self.pel_width % self.pel_num_heads or self.alignment_width % self.alignment_num_heads:
            problems.append("pel_width / alignment_width must be divisible by their number of heads")
        if problems:
            raise ValueError("Invalid EveConfig: " + "; ".join(problems))

    # ------------------------------------------------------------------------------------------------ presets
    @classmethod
    def tiny(cls, **overrides) -> "EveConfig":
        """CPU preset of the embedded default: 4-layer Llama (hidden 128) with the bundled tokenizer's vocabulary,
        PEL width 64, 96 px canvas of 3 x 3 student cells of 32 px (patch 16, pool 2: EVE's PEL at a coarser
        patch), EfficientNet-Lite0 teacher at 96 px (3 x 3 grid, 1280 channels).

        The grid matches the demo's scenes (objects on a 3 x 3 layout): one visual token sees one whole object.
        At the earlier 112 px / 16 px cells (7 x 7 tokens) an object was cut across up to four tokens and its
        outline could only be read by combining them position by position, which the 4-layer decoder did not
        learn: shape answers fell below chance (docs/model.md, "The embedded default's geometry")."""
        from .tokenizer import TINY_IMAGE_TOKEN_ID, TINY_VOCAB_SIZE

        text_config = LlamaConfig(
            vocab_size=TINY_VOCAB_SIZE,
            hidden_size=128,
            intermediate_size=344,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=512,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=3,
            tie_word_embeddings=False,
        )
        values = dict(
            text_config=text_config,
            image_token_id=TINY_IMAGE_TOKEN_ID,
            patch_size=16,
            pool_stride=2,
            pel_width=64,
            pel_num_heads=4,
            attention_full_width_scale=False,
            image_max_side=96,
            teacher_kind="efficientnet_lite0",
            teacher_feature_dim=1280,
            teacher_image_size=96,
            teacher_grid_size=3,
            alignment_depth_interval=2,
            alignment_width=64,
            alignment_num_heads=4,
        )
        values.update(overrides)
        return cls(**values)

    @classmethod
    def tiny_hd(cls, **overrides) -> "EveConfig":
        """Tiny preset at twice the side, 192 px (6 x 6 student grid, 2 x 2-pooled onto the 3 x 3 teacher grid),
        as EVE-7B-HD is EVE-7B at twice the side."""
        return cls.tiny(**{"image_max_side": 192, **overrides})

    @classmethod
    def eve_7b(cls, **overrides) -> "EveConfig":
        """EVE-7B (paper values): Vicuna-7B-v1.5, PEL 1024/8 heads/patch 14/pool 2, max side 672,
        CLIP ViT-L/14-336 penultimate layer (24x24), PAL depths 32, 28, ..., 0."""
        text_config = LlamaConfig(
            vocab_size=32000,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
            tie_word_embeddings=False,
        )
        values = dict(
            text_config=text_config,
            image_token_id=32000,
            image_max_side=672,
            teacher_kind="clip",
            teacher_path="openai/clip-vit-large-patch14-336",
        )
        values.update(overrides)
        return cls(**values)

    @classmethod
    def eve_7b_hd(cls, **overrides) -> "EveConfig":
        """EVE-7B-HD: EVE-7B with max side 1344 (48x48 student grid, 2x2-pooled to CLIP's 24x24)."""
        return cls.eve_7b(**{"image_max_side": 1344, **overrides})


# A saved config names this class in its ``auto_map`` (and the file travels with the checkpoint): see modeling_eve.
EveConfig.register_for_auto_class()

__all__ = ["EveConfig", "CLIP_IMAGE_MEAN", "CLIP_IMAGE_STD"]
