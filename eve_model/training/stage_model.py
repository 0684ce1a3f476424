"""The EVE adapter for stages 1-3, and ``build_stage_model`` (the trainer's one entry point).

A *stage model* (``stage_protocol.StageModel``) builds the ``nn.Module``, names its parameter groups
(pel / aligning / llm), turns shard samples into a batch, runs the forward pass and writes the final HF
directory. The trainer (engine.py) knows nothing model-specific beyond this protocol; ``base_llm.py`` is
the other implementation. The PAL travels between stages as ``alignment_state.ALIGNMENT_STATE_FILE``.

Freezing per stage (docs/model.md, "The three stages"): stage 1 trains PEL + projector + aligning layer with the LLM
frozen; stages 2-3 train everything but the teacher, which ``enable_alignment`` builds frozen.

The model of every stage is ``EveConfig.<model_preset>(**model_overrides)``: stage 1 puts a fresh PEL on the base
LLM, stages 2-3 load their init checkpoint's weights into it after checking that the network is the same
(``check_same_network``); the canvas, teacher, pixel protocol and loss weight follow the stage config, so a
stage 3 at 1344 px can start from a 672 px stage 2 (EVE-7B-HD).

The final directory also gets a model card (``eve_model.model_card``) with what the job knows: the dataset it
trained on, the stage config, the init checkpoint and the training metrics so far.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from eve_model.constants import IMAGE_PLACEHOLDER
from eve_model.shards import ShardSample
from eve_model.training.alignment_state import has_alignment_state, load_alignment_state, write_alignment_state
from eve_model.training.base_llm import BaseLlmStageModel
from eve_model.training.config import StageConfig, StageConfigError, StageId
from eve_model.training.data import processor_inputs
from eve_model.training.stage_protocol import StageModel, StepOutput, eve_config_for_preset, write_stage_model_card

STAGE_ADJUSTABLE_FIELDS = frozenset({
    "image_max_side", "teacher_kind", "teacher_path", "teacher_select_layer", "teacher_image_size",
    "teacher_grid_size", "alignment_loss_weight", "pixel_protocol", "image_mean", "image_std",
})
"""``EveConfig`` fields a stage may set differently from its init checkpoint: what the model is shown and how it
is taught, never the network itself."""

_CONFIG_BOOKKEEPING = frozenset({
    "text_config", "transformers_version", "architectures", "auto_map", "dtype", "torch_dtype", "_name_or_path",
    "model_type", "output_attentions", "output_hidden_states", "return_dict", "use_cache",
})
_TEXT_NETWORK_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "rms_norm_eps", "tie_word_embeddings",
)


def check_same_network(saved: dict[str, Any], built, stage: StageId, init_dir: Path) -> None:
    """Raise ``StageConfigError`` naming every field where ``built`` (the stage's ``EveConfig``) describes another
    network than the checkpoint's saved ``config.json`` (``saved``); fields in ``STAGE_ADJUSTABLE_FIELDS`` may
    differ."""
    mine = built.to_dict()
    differences = []
    for name, value in saved.items():
        if name in STAGE_ADJUSTABLE_FIELDS or name in _CONFIG_BOOKKEEPING or name not in mine:
            continue
        if mine[name] != value:
            differences.append(f"{name}: checkpoint {value!r}, stage {mine[name]!r}")
    saved_text, built_text = saved.get("text_config", {}), mine.get("text_config", {})
    for name in _TEXT_NETWORK_FIELDS:
        if name in saved_text and saved_text.get(name) != built_text.get(name):
            differences.append(f"text_config.{name}: checkpoint {saved_text.get(name)!r}, stage {built_text.get(name)!r}")
    if differences:
        raise StageConfigError(
            f"stage {stage}: the init checkpoint {init_dir} is another network than model_preset + model_overrides "
            f"describe ({'; '.join(differences)}); a stage may change only {sorted(STAGE_ADJUSTABLE_FIELDS)}"
        )


class EveStageModel:
    """``EveForCausalLM`` with its aligning layer and frozen teacher, for stages 1-3."""

    def __init__(self, config: StageConfig) -> None:
        from transformers import AutoTokenizer

        from eve_model.modeling_eve import EveForCausalLM
        from eve_model.processing_eve import EveImageProcessor, EveProcessor

        self.config = config
        init_dir = Path(config.init_checkpoint)
        eve_config = eve_config_for_preset(config.model_preset, config.model_overrides)
        if config.stage == StageId.PREALIGN:
            self.model = EveForCausalLM.from_text_model(str(init_dir), eve_config)
        else:
            check_same_network(json.loads((init_dir / "config.json").read_text()), eve_config, config.stage, init_dir)
            self.model = EveForCausalLM.from_pretrained(str(init_dir), config=eve_config)
        self.model.enable_alignment(teacher_feature_cache_dir=config.teacher_feature_cache_dir)
        if config.stage != StageId.PREALIGN and has_alignment_state(init_dir):
            load_alignment_state(self.model, init_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(str(init_dir))
        if IMAGE_PLACEHOLDER not in self.tokenizer.get_vocab():
            # A production base LLM (Vicuna) has no <image> token; image-token ids are masked out before the
            # embedding lookup, so the id may lie past the vocabulary (EveConfig.image_token_id).
            self.tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]})
        self.processor = EveProcessor(
            EveImageProcessor.from_eve_config(self.model.config), self.tokenizer, config.max_sequence_length_tokens,
            config.max_length_counts_visual_tokens,
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
        write_stage_model_card(directory, self.config, self.describe())

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
