"""What the stage trainer needs from a model (``StageModel``, ``StepOutput``) and the model-preset lookup.

Both implementations import from here: ``stage_model.EveStageModel`` (stages 1-3) and
``base_llm.BaseLlmStageModel`` (the tiny base-LLM bootstrap); ``stage_model.build_stage_model`` picks
one. Keeping these names in a module of their own lets ``stage_model`` depend on ``base_llm`` without
``base_llm`` depending back on ``stage_model``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from eve_model.shards import ShardSample


@dataclass
class StepOutput:
    loss: torch.Tensor
    """Scalar training loss that is back-propagated (CE + weight x alignment)."""
    ce_loss: torch.Tensor
    alignment_loss: torch.Tensor | None


class StageModel(Protocol):
    model: torch.nn.Module

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]: ...

    def collate(self, samples: list[ShardSample]) -> dict[str, torch.Tensor]: ...

    def forward(self, engine, batch: dict[str, torch.Tensor]) -> StepOutput: ...

    def save_final(self, directory: Path, state_dict: dict[str, torch.Tensor]) -> None: ...

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int: ...

    def describe(self) -> dict[str, Any]: ...


def eve_config_for_preset(preset: str, overrides: dict[str, Any] | None = None):
    """``EveConfig.<preset>(**overrides)`` by name."""
    from eve_model.configuration_eve import EveConfig

    builders = {"tiny": EveConfig.tiny, "tiny_hd": EveConfig.tiny_hd, "eve_7b": EveConfig.eve_7b, "eve_7b_hd": EveConfig.eve_7b_hd}
    return builders[preset](**(overrides or {}))


__all__ = ["StageModel", "StepOutput", "eve_config_for_preset"]
