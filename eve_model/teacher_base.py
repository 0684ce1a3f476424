"""The interface every frozen vision teacher implements (``VisionTeacher``).

Concrete teachers and ``build_teacher`` are in ``eve_model.teachers``; the disk-cached wrapper is
``eve_model.teacher_cache.CachedTeacher``. Both import this module, and it imports neither.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VisionTeacher(nn.Module):
    """A frozen feature extractor with a square feature grid. Always in eval mode, never trainable."""

    image_size: int
    """Side in pixels of the square input canvas."""
    grid_size: int
    """Side of the output feature grid."""
    feature_dim: int
    """Channels per feature."""
    weights_sha256: str
    """Digest of the weight file(s), recorded in lineage."""

    def freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "VisionTeacher":
        # A teacher never leaves eval mode (batch-norm statistics and dropout stay fixed).
        return super().train(False)

    def features(self, rgb: torch.Tensor) -> torch.Tensor:
        """rgb (B, 3, T, T) in [0, 1] -> (B, D, g, g)."""
        raise NotImplementedError

    def valid_cells(self, mask: torch.Tensor) -> torch.Tensor:
        """mask (B, T, T) -> (B, g*g) bool: cells covered by image pixels."""
        cell = self.image_size // self.grid_size
        coverage = F.avg_pool2d(mask[:, None].float(), kernel_size=cell, stride=cell)
        return (coverage > 0.5).flatten(1)

    @torch.no_grad()
    def forward(self, teacher_pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 4, T, T) -> features (B, g*g, D) row-major, valid (B, g*g) bool."""
        if teacher_pixel_values.shape[-1] != self.image_size or teacher_pixel_values.shape[1] != 4:
            raise ValueError(f"teacher expects (B, 4, {self.image_size}, {self.image_size}), got {tuple(teacher_pixel_values.shape)}")
        dtype = next(self.parameters()).dtype
        grid = self.features(teacher_pixel_values[:, :3].to(dtype))
        return grid.flatten(2).transpose(1, 2), self.valid_cells(teacher_pixel_values[:, 3])

    @torch.no_grad()
    def embed(self, teacher_pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 4, T, T) -> (B, D): mean over valid cells (all cells if none), L2-normalised."""
        features, valid = self(teacher_pixel_values)
        weights = valid.float()
        weights = torch.where(weights.sum(dim=1, keepdim=True) > 0, weights, torch.ones_like(weights))
        pooled = (features.float() * weights[..., None]).sum(dim=1) / weights.sum(dim=1, keepdim=True)
        return F.normalize(pooled, dim=-1)


__all__ = ["VisionTeacher"]
