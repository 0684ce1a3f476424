"""What the stage trainer needs from a model (``StageModel``, ``StepOutput``) and the model-preset lookup.

Both implementations import from here: ``stage_model.EveStageModel`` (stages 1-3) and
``base_llm.BaseLlmStageModel`` (the tiny base-LLM bootstrap); ``stage_model.build_stage_model`` picks
one. Keeping these names in a module of their own lets ``stage_model`` depend on ``base_llm`` without
``base_llm`` depending back on ``stage_model``.
"""

from __future__ import annotations

import json
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


_INTENDED_USE = {
    "tiny": ("The platform's embedded demo: a tiny EVE trained on synthetic scenes of coloured shapes. For testing "
             "the platform end to end; it knows nothing about real images or real language."),
    "default": ("Research and evaluation of encoder-free vision-language models; a candidate for the platform's "
                "evaluation gate and reviewer approval. The base LLM's licence and the training data's licences apply."),
}
_LIMITATIONS = (
    "Stage outputs are intermediate checkpoints until the evaluation gate and a reviewer approve a version. "
    "The training-only Patch Aligning Layer (aligning_layer.safetensors) is not part of the model; it lets the next "
    "stage continue the alignment loss. EVE v1 reads one image per sample."
)


def _metrics_summary(metrics_file: Path) -> list[tuple[str, Any]]:
    """Rows for the card from ``metrics.jsonl`` (rank 0 writes it; at save time it holds every step so far)."""
    if not metrics_file.exists():
        return [("metrics", "none recorded")]
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    if not rows:
        return [("metrics", "none recorded")]
    tail = rows[-max(1, len(rows) // 10):]
    summary: list[tuple[str, Any]] = [("steps logged", len(rows)), ("last step", rows[-1]["step"])]
    for key in ("loss", "ce_loss", "alignment_loss"):
        if rows[-1].get(key) is not None:
            summary.append((f"{key}: first / last / mean of last 10%",
                            f"{rows[0][key]:.4f} / {rows[-1][key]:.4f} / {sum(r[key] for r in tail) / len(tail):.4f}"))
    speeds = [r["samples_per_second"] for r in rows if r.get("samples_per_second")]
    if speeds:
        summary.append(("samples/s (mean)", round(sum(speeds) / len(speeds), 2)))
    return summary


def write_stage_model_card(directory: Path, config, description: dict[str, Any]) -> Path:
    """The training job's part of the model card of a stage's final directory: model, training data (dataset
    hash and location), training procedure (the stage config and its hash, code revision, init checkpoint),
    training metrics, intended use and limitations. Evaluation and approval are added by later writers
    (``eve_model.model_card.write_model_card`` updates a card section by section)."""
    from eve_model.identity import code_tree_revision
    from eve_model.model_card import markdown_table, write_model_card

    family = "tiny" if config.model_preset.startswith("tiny") else "default"
    semantic = {key: value for key, value in config.to_json_dict().items()
                if key not in ("run_name", "output_dir", "dataset_location", "init_checkpoint", "dataset_hash")}
    eve = description.get("architecture") == "EveForCausalLM"
    loading = ("`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` and "
               "`AutoProcessor.from_pretrained(dir, trust_remote_code=True)` (the code travels with the checkpoint)"
               if eve else "`AutoModelForCausalLM.from_pretrained(dir)` (a plain Llama decoder)")
    sections = {
        "Model": "\n\n".join([
            f"{description.get('architecture')} from the platform's stage `{config.stage}` "
            f"(run `{config.run_name}`, model preset `{config.model_preset}`). Load with {loading}.",
            markdown_table(sorted(description.items()), header=("model", "value")),
        ]),
        "Intended use": _INTENDED_USE[family],
        "Training data": markdown_table([
            ("dataset_hash", config.dataset_hash),
            ("dataset_location", config.dataset_location),
            ("template", config.template),
        ]),
        "Training procedure": "\n\n".join([
            markdown_table([
                ("stage", str(config.stage)),
                ("stage_config_hash", config.content_hash()),
                ("code_revision", code_tree_revision()),
                ("init_checkpoint", config.init_checkpoint),
            ]),
            "Stage configuration (what the stage computes; names and locations left out):",
            markdown_table(sorted(semantic.items()), header=("setting", "value")),
        ]),
        "Training metrics": markdown_table(_metrics_summary(Path(config.output_dir) / "metrics.jsonl")),
        "Limitations": _LIMITATIONS,
    }
    metadata = {
        "library_name": "transformers",
        "pipeline_tag": "image-text-to-text" if eve else "text-generation",
        "tags": ["eve", "vision-language" if eve else "text", f"stage-{config.stage}", config.model_preset],
    }
    return write_model_card(directory, sections, metadata, title=f"{config.run_name} (stage {config.stage})")


__all__ = ["StageModel", "StepOutput", "eve_config_for_preset", "write_stage_model_card"]
