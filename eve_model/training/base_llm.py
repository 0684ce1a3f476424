"""The ``base-llm`` stage: a tiny Llama decoder trained from scratch on the dataset's text.

No small pretrained causal LM installs offline, so the embedded default bootstraps one: the text
decoder of ``EveConfig.<preset>()`` (a plain ``LlamaForCausalLM``) is trained on the captions and
conversation turns of the dataset with the bundled tiny tokenizer. Its final directory is an HF
Llama directory (config, safetensors, tokenizer) and is versioned like any stage output; stage 1
starts from it exactly as production starts from Vicuna-7B.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from eve_model.constants import IGNORE_INDEX
from eve_model.shards import ShardSample
from eve_model.training.config import StageConfig
from eve_model.training.data import plain_text
from eve_model.training.stage_protocol import StepOutput, eve_config_for_preset, write_stage_model_card


class BaseLlmStageModel:
    """Adapter of a plain ``LlamaForCausalLM`` to the stage trainer."""

    def __init__(self, config: StageConfig) -> None:
        from transformers import LlamaForCausalLM

        from eve_model.tokenizer import load_tiny_tokenizer

        if config.model_preset not in ("tiny", "tiny_hd"):
            raise ValueError("the base-llm bootstrap exists for the tiny presets only; production names an LLM directory")
        self.config = config
        self.text_config = eve_config_for_preset(config.model_preset, config.model_overrides).text_config
        self.tokenizer = load_tiny_tokenizer()
        self.model = LlamaForCausalLM(self.text_config)
        self.max_length = config.max_sequence_length_tokens

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        return {"pel": [], "aligning": [], "llm": list(self.model.parameters())}

    def collate(self, samples: list[ShardSample]) -> dict[str, torch.Tensor]:
        """BOS + text + EOS per sample, right-padded; loss on every real token.

        Returns input_ids, attention_mask, labels, each (batch, longest sequence)."""
        tok = self.tokenizer
        rows = []
        for sample in samples:
            ids = tok(plain_text(sample), add_special_tokens=False)["input_ids"]
            rows.append(([tok.bos_token_id] + ids + [tok.eos_token_id])[: self.max_length])
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row)
            attention_mask[i, : len(row)] = 1
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def forward(self, engine, batch: dict[str, torch.Tensor]) -> StepOutput:
        output = engine(**batch)
        return StepOutput(loss=output.loss, ce_loss=output.loss.detach(), alignment_loss=None)

    def save_final(self, directory: Path, state_dict: dict[str, torch.Tensor]) -> None:
        self.model.save_pretrained(directory, state_dict=state_dict, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        write_stage_model_card(directory, self.config, self.describe())

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def describe(self) -> dict[str, Any]:
        return {"architecture": "LlamaForCausalLM", "num_parameters": sum(p.numel() for p in self.model.parameters())}


__all__ = ["BaseLlmStageModel"]
