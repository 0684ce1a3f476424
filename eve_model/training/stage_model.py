"""The EVE adapter for stages 1-3, and ``build_stage_model`` (the trainer's one entry point).

A *stage model* (``stage_protocol.StageModel``) builds the ``nn.Module``, names its parameter groups
(pel / aligning / llm), turns shard samples into a batch, runs the forward pass and writes the final HF
directory. The trainer (engine.py) knows nothing model-specific beyond this protocol; ``base_llm.py`` is
the other implementation. The PAL travels between stages as ``alignment_state.ALIGNMENT_STATE_FILE``.

Freezing per stage (docs/model.md, "The three stages"): stage 1 trains PEL + projector + aligning layer with the LLM
frozen; stages 2-3 train everything but the teacher, which ``enable_alignment`` builds frozen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from eve_model.constants import IMAGE_PLACEHOLDER
from eve_model.shards import ShardSample
from eve_model.training.alignment_state import has_alignment_state, load_alignment_state, write_alignment_state
from eve_model.training.base_llm import BaseLlmStageModel
from eve_model.training.config import StageConfig, StageId
from eve_model.training.data import processor_inputs
from eve_model.training.stage_protocol import StageModel, StepOutput, eve_config_for_preset


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
        if config.stage != StageId.PREALIGN and has_alignment_state(init_dir):
            load_alignment_state(self.model, init_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(str(init_dir))
        if IMAGE_PLACEHOLDER not in self.tokenizer.get_vocab():
            # A production base LLM (Vicuna) has no <image> token; image-token ids are masked out before the
            # embedding lookup, so the id may lie past the vocabulary (EveConfig.image_token_id).
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
        aligning_prefix, teacher_prefix = "aligning_layer.", "teacher."
        model_state = {k: v for k, v in state_dict.items() if not k.startswith((aligning_prefix, teacher_prefix))}
        aligning_state = {k[len(aligning_prefix):]: v for k, v in state_dict.items() if k.startswith(aligning_prefix)}
        self.model.save_pretrained(directory, state_dict=model_state, safe_serialization=True)
        if aligning_state:
            write_alignment_state(aligning_state, self.model.config.alignment_depths, directory)
        self.processor.save_pretrained(directory)

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Tokens the LLM sees: text tokens plus each image's visual block (CLS + rows with SPL), which the
        processor already expanded into the sequence, so the attention mask counts them."""
        return int(batch["attention_mask"].sum())

    def describe(self) -> dict[str, Any]:
        groups = self.model.parameter_groups()
        return {
            "architecture": "EveForCausalLM",
            "num_parameters_by_group": {name: sum(p.numel() for p in ps) for name, ps in groups.items()},
        }


def build_stage_model(config: StageConfig) -> StageModel:
    if config.stage == StageId.BASE_LLM:
        return BaseLlmStageModel(config)
    return EveStageModel(config)


# StageModel, StepOutput and eve_config_for_preset live in stage_protocol; importable from here as before.
__all__ = ["EveStageModel", "StageModel", "StepOutput", "build_stage_model", "eve_config_for_preset"]
