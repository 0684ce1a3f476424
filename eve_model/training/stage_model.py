"""What the stage trainer needs from a model, and the EVE adapter for stages 1-3.

A *stage model* builds the ``nn.Module``, names its parameter groups (pel / aligning / llm),
turns shard samples into a batch, runs the forward pass and writes the final HF directory. The
trainer (engine.py) knows nothing model-specific beyond this protocol; ``base_llm.py`` is the other
implementation.

Freezing per stage (eve-spec.md 4.1): stage 1 trains PEL + projector + aligning layer with the LLM
frozen; stages 2-3 train everything but the teacher, which ``enable_alignment`` builds frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from eve_model.constants import IMAGE_PLACEHOLDER
from eve_model.shards import ShardSample
from eve_model.training.config import StageConfig, StageId
from eve_model.training.data import processor_inputs

ALIGNMENT_STATE_NAME = "aligning_layer.safetensors"


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


class EveStageModel:
    """``EveForCausalLM`` with its aligning layer and frozen teacher, for stages 1-3."""

    def __init__(self, config: StageConfig) -> None:
        from transformers import AutoTokenizer

        from eve_model.modeling_eve import EveForCausalLM
        from eve_model.processing_eve import EveImageProcessor, EveProcessor

        self.config = config
        init_dir = Path(config.init_checkpoint)
        if config.stage == StageId.PREALIGN:
            eve_config = eve_config_for_preset(config.model_preset, config.model_overrides)
            self.model = EveForCausalLM.from_text_model(str(init_dir), eve_config)
        else:
            self.model = EveForCausalLM.from_pretrained(str(init_dir))
        self.model.enable_alignment(teacher_feature_cache_dir=config.teacher_feature_cache_dir)
        if config.stage != StageId.PREALIGN and (init_dir / ALIGNMENT_STATE_NAME).exists():
            self.model.load_alignment_state(str(init_dir))
        self.tokenizer = AutoTokenizer.from_pretrained(str(init_dir))
        if IMAGE_PLACEHOLDER not in self.tokenizer.get_vocab():
            # A production base LLM (Vicuna) has no <image> token; the placeholder is spliced out before the
            # embedding lookup, so its id may lie past the vocabulary (EveConfig.image_token_id).
            self.tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]})
        self.processor = EveProcessor(
            EveImageProcessor.from_eve_config(self.model.config), self.tokenizer, config.max_sequence_length_tokens
        )

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return self.model.parameter_groups()

    def collate(self, samples: list[ShardSample]) -> dict[str, torch.Tensor]:
        return dict(self.processor(processor_inputs(samples, self.config.template), self.config.template))

    def forward(self, engine, batch: dict[str, torch.Tensor]) -> StepOutput:
        output = engine(**batch)
        alignment = getattr(output, "alignment_loss", None)
        return StepOutput(
            loss=output.loss,
            ce_loss=output.ce_loss.detach(),
            alignment_loss=alignment.detach() if alignment is not None else None,
        )

    def save_final(self, directory: Path, state_dict: dict[str, torch.Tensor]) -> None:
        """HF directory from the consolidated ``state_dict`` (works under ZeRO-3, where the module's own
        parameters are partitions): PEL + LLM via save_pretrained, the PAL as aligning_layer.safetensors."""
        from safetensors.torch import save_file

        aligning_prefix, teacher_prefix = "aligning_layer.", "teacher."
        model_state = {k: v for k, v in state_dict.items() if not k.startswith((aligning_prefix, teacher_prefix))}
        aligning_state = {
            k[len(aligning_prefix):]: v.contiguous() for k, v in state_dict.items() if k.startswith(aligning_prefix)
        }
        self.model.save_pretrained(directory, state_dict=model_state, safe_serialization=True)
        if aligning_state:
            depths = ",".join(map(str, self.model.config.alignment_depths))
            save_file(aligning_state, str(directory / ALIGNMENT_STATE_NAME), metadata={"depths": depths})
        self.processor.save_pretrained(directory)

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Tokens the LLM sees: text tokens plus the spliced visual block (CLS + rows with SPL) per image."""
        tokens = int(batch["attention_mask"].sum())
        if "image_grid_hw" in batch and "has_image" in batch:
            grid = batch["image_grid_hw"].long()
            visual = (1 + grid[:, 0] * (grid[:, 1] + 1) - 1) * batch["has_image"].long()
            tokens += int(visual.sum())
        return tokens

    def describe(self) -> dict[str, Any]:
        groups = self.model.parameter_groups()
        return {
            "architecture": "EveForCausalLM",
            "num_parameters_by_group": {name: sum(p.numel() for p in ps) for name, ps in groups.items()},
        }


def build_stage_model(config: StageConfig) -> StageModel:
    if config.stage == StageId.BASE_LLM:
        from eve_model.training.base_llm import BaseLlmStageModel

        return BaseLlmStageModel(config)
    return EveStageModel(config)


__all__ = ["ALIGNMENT_STATE_NAME", "EveStageModel", "StageModel", "StepOutput", "build_stage_model", "eve_config_for_preset"]
