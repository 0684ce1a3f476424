"""A content-addressed disk cache of the frozen vision teacher's patch features.

The teacher is frozen and its input is a deterministic function of the image (``EveImageProcessor``'s
teacher canvas), so its output per image never changes within a run or across runs: curation,
the three training stages and the contamination check all embed the same images with the same
teacher. On the embedded default the teacher (EfficientNet-Lite0 at 224 px) costs about four times
the tiny EVE model's own forward + backward per sample, so recomputing it is most of a stage's time.

Key: sha256 over (teacher class, teacher weights digest, parameter dtype, input canvas side) and the
row's ``teacher_pixel_values`` bytes (float32, contiguous). A hit returns exactly the stored tensors;
a miss runs the teacher once for all missing rows of the batch, stores each row atomically
(write to a temporary name, then ``os.replace``; concurrent ranks that race write the same content).
safetensors is lossless, so a row's targets are the same whether it hit or missed.

Why it is opt-in (``StageConfig.teacher_feature_cache_dir``): at production scale the features of
CLIP ViT-L/14-336 are 576 x 1024 floats (2.4 MB) per image, terabytes for a pre-training set, and
the teacher is a small fraction of a 7B step. The embedded default turns it on.

The wrapped teacher is held outside the module tree (not a registered submodule), so DeepSpeed
never partitions it: under ZeRO-3 one rank missing the cache while another hits would otherwise
gather the teacher's parameters on one rank only and hang.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch

from eve_model.teacher_base import VisionTeacher

CACHE_FORMAT = "eve-teacher-features/1"


class CachedTeacher(VisionTeacher):
    """``VisionTeacher`` whose ``forward`` reads and fills a feature cache under ``directory``."""

    def __init__(self, teacher: VisionTeacher, directory: str | Path) -> None:
        super().__init__()
        # A plain attribute on purpose: see the module docstring (ZeRO-3).
        self.__dict__["inner"] = teacher
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.image_size, self.grid_size, self.feature_dim = teacher.image_size, teacher.grid_size, teacher.feature_dim
        self.weights_sha256 = teacher.weights_sha256
        self.hits = 0
        self.misses = 0

    def _apply(self, fn, recurse: bool = True):
        self.inner._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def _identity(self) -> bytes:
        dtype = next(self.inner.parameters()).dtype
        return f"{CACHE_FORMAT}|{type(self.inner).__name__}|{self.weights_sha256}|{dtype}|{self.image_size}".encode()

    def key(self, row: torch.Tensor) -> str:
        """Cache key of one (4, T, T) teacher input."""
        digest = hashlib.sha256(self._identity())
        digest.update(row.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    def _load(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        from safetensors.torch import load_file

        path = self._path(key)
        if not path.exists():
            return None
        try:
            stored = load_file(str(path))
            return stored["features"], stored["valid"]
        except Exception:  # a truncated file from a crash outside os.replace: recompute and overwrite
            return None

    def _store(self, key: str, features: torch.Tensor, valid: torch.Tensor) -> None:
        from safetensors.torch import save_file

        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}-", suffix=".tmp")
        os.close(handle)
        try:
            save_file({"features": features.contiguous(), "valid": valid.contiguous()}, temporary)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)

    def features(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.inner.features(rgb)

    @torch.no_grad()
    def forward(self, teacher_pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 4, T, T) -> features (B, g*g, D), valid (B, g*g): as the wrapped teacher, via the cache."""
        device = teacher_pixel_values.device
        keys = [self.key(row) for row in teacher_pixel_values]
        found = [self._load(key) for key in keys]
        missing = [index for index, entry in enumerate(found) if entry is None]
        if missing:
            features, valid = self.inner(teacher_pixel_values[missing])
            for position, index in enumerate(missing):
                entry = (features[position].cpu().clone(), valid[position].cpu().clone())
                self._store(keys[index], *entry)
                found[index] = entry
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        return (
            torch.stack([entry[0] for entry in found]).to(device),
            torch.stack([entry[1] for entry in found]).to(device),
        )


__all__ = ["CACHE_FORMAT", "CachedTeacher"]
