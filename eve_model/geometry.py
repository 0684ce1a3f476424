"""Student/teacher grid arithmetic shared by ``EveConfig``, ``EveImageProcessor`` and the PEL.

Both carry the same five sizes (the processor stands alone so it can be saved and loaded
without the model config); the derived quantities are defined once, here, and so is the number of
visual tokens per image (``visual_token_count``). Imports nothing, so the processor does not pay for
importing transformers.
"""

from __future__ import annotations

from typing import TypeVar

Count = TypeVar("Count")


def visual_token_count(grid_h: Count, grid_w: Count) -> Count:
    """Visual tokens the PEL emits for a student grid of ``grid_h`` rows x ``grid_w`` columns, which is also
    how many ``<image>`` token ids the processor puts in the sequence: 1 class token + ``grid_h`` rows of
    (``grid_w`` patch tokens + 1 row separator).

    Works element-wise on ints and on integer tensors alike (e.g. ``image_grid_hw[:, 0], image_grid_hw[:, 1]``).
    """
    return 1 + grid_h * (grid_w + 1)


class GridGeometry:
    """Derived grid sizes; the class using it provides ``patch_size``, ``pool_stride``,
    ``image_max_side``, ``teacher_image_size`` and ``teacher_grid_size``."""

    patch_size: int
    pool_stride: int
    image_max_side: int
    teacher_image_size: int
    teacher_grid_size: int

    @property
    def student_cell_px(self) -> int:
        """Pixels per student visual token side (patch_size * pool_stride)."""
        return self.patch_size * self.pool_stride

    @property
    def teacher_cell_px(self) -> int:
        """Pixels per teacher feature side on the teacher canvas."""
        return self.teacher_image_size // self.teacher_grid_size

    @property
    def student_max_grid(self) -> int:
        """Student visual-token grid side of a square image."""
        return self.image_max_side // self.student_cell_px

    @property
    def patch_ratio(self) -> int:
        """Student grid side / teacher grid side (1 for EVE-7B, 2 for EVE-7B-HD)."""
        return self.student_max_grid // self.teacher_grid_size
