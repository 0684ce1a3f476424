"""The typed configuration of one training stage, and the named presets.

A stage config is a JSON file handed to ``python -m eve_model.train <stage_config.json>``; the
platform writes it, the job reads it, and the resolved copy lands in every checkpoint and in the
final model directory. Presets are Python functions (``tiny_stage_config``, ``eve_7b_stage_config``)
that return a complete config; JSON is only the hand-over format.

Glossary: a *sample* is one dataset item (image + caption, image + conversation, or text only);
a *step* is one optimizer step over ``global_batch_size_samples`` samples; a *micro-batch* is what
one rank pushes through forward/backward at once.

Checks come in two layers. Field validators run on construction (a typo or an inconsistent stage
fails at once). ``eve_model.preflight.preflight_stage`` runs once per rank at job start, before any
compute: it needs the world size and the file system (init checkpoint, dataset manifest and its
hash). The entry point maps a failure of either to ``ExitCode.CONFIG_ERROR``.
"""

from __future__ import annotations

import hashlib
import json
import math
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator



class StageId(StrEnum):
    """The one stage identifier of the platform: configs, results, overrides, folder names, CLI.

    Its value is the string written everywhere (``stage-1``, ``"stage": "2"``); a ``StrEnum``, so it
    formats and compares as that string.
    """

    BASE_LLM = "base-llm"
    """Bootstrap a text-only Llama decoder from scratch (embedded default only)."""
    PREALIGN = "1"
    """LLM-guided pre-aligning: PEL + projector + aligning layer train, LLM frozen."""
    PRETRAIN = "2"
    """Generative pre-training: everything but the teacher trains."""
    SFT = "3"
    """Supervised fine-tuning on conversations: everything but the teacher trains."""

    @classmethod
    def parse(cls, value: "StageId | str | int") -> "StageId":
        """A stage from its value (``"2"``, ``2``, ``"base-llm"``); a clear error otherwise."""
        try:
            return cls(str(value).strip())
        except ValueError:
            raise StageConfigError(
                f"unknown stage {value!r}; expected one of {', '.join(stage.value for stage in cls)}"
            ) from None

    @property
    def previous(self) -> "StageId | None":
        """The stage whose output this one starts from (None for the bootstrap)."""
        order = list(StageId)
        index = order.index(self)
        return order[index - 1] if index else None


ParameterGroupName = Literal["pel", "aligning", "llm"]
ModelPresetName = Literal["tiny", "tiny_hd", "eve_7b", "eve_7b_hd"]
StagePresetName = Literal["tiny", "eve_7b", "eve_7b_hd"]
"""Names of the stage-config preset families (``PRESETS``)."""


# Fields that change where or how visibly a run happens, never what it computes; they are left
# out of the content hash so that moving a run or renaming it keeps its cache key.
_NON_SEMANTIC_FIELDS = frozenset(
    {
        "run_name",
        "output_dir",
        "checkpoint_interval_steps",
        "keep_last_checkpoints",
        "wandb_mode",
        "wandb_project",
        "wandb_dir",
        "wandb_group",
        "wandb_tags",
        "progress_interval_seconds",
        "record_data_order",
        "log_interval_steps",
        "deepspeed_config_path",
        "teacher_feature_cache_dir",
        "checkpoint_interval_minutes",
        "data_loader_workers",
        "data_prefetch_steps",
        # Locations: the cache key pins what they hold by content (dataset hash, parent weights hash),
        # so a moved platform home or another work tree keeps the key.
        "dataset_location",
        "init_checkpoint",
    }
)


class StageConfigError(ValueError):
    """A stage config that cannot run; raised before any compute (the entry point exits 2)."""


class StageConfig(BaseModel):
    """Everything one training stage needs; JSON-serialisable and hashed into the stage's cache key."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    stage: StageId
    """1 pre-align, 2 pre-train, 3 SFT, or "base-llm" (the tiny text decoder bootstrap)."""

    run_name: str = Field(min_length=1, max_length=200)
    """Human-readable name, shown in W&B and the logs."""

    output_dir: str
    """Directory for checkpoints, metrics.jsonl and the final HF model (under ``final/``)."""

    init_checkpoint: str | None = None
    """Stage 1: a base LLM directory (HF Llama, e.g. Vicuna-7B); stages 2-3: the previous stage's
    final model directory; base-llm: None (random init)."""

    dataset_location: str
    """Dataset version directory (local path or s3:// URL) holding manifest.json and shards/."""

    dataset_hash: str | None = None
    """Expected ``dataset_hash`` of the manifest; the job refuses to start on a mismatch.
    None only for exploratory runs: the platform always pins it."""

    model_preset: ModelPresetName = "tiny"
    """Name of the ``EveConfig`` preset (``EveConfig.tiny()`` etc.) the model is built from."""

    model_overrides: dict[str, Any] = Field(default_factory=dict)
    """Keyword overrides for the ``EveConfig`` preset, e.g. ``{"teacher_path": "/models/clip-vit-large-patch14-336"}``.
    Every stage builds its model from ``model_preset`` and these; stages 2-3 then load their init checkpoint's
    weights into it. The network must match the checkpoint's (widths, depths, heads, vocabulary: a clear error
    otherwise); the canvas, the teacher, the pixel protocol and the loss weight may change, which is how
    EVE-7B-HD's stage 3 fine-tunes the 672 px stage-2 model at 1344 px."""

    trainable_groups: tuple[ParameterGroupName, ...]
    """Parameter groups that train; every other parameter is frozen. The teacher never trains."""

    learning_rates: dict[ParameterGroupName, float]
    """Peak learning rate per trainable group."""

    warmup_ratio: float = Field(ge=0.0, lt=1.0)
    """Fraction of the total steps spent in linear warm-up before the cosine decay to zero."""

    weight_decay: float = Field(default=0.0, ge=0.0)
    """AdamW weight decay (EVE uses 0)."""

    adam_betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""

    adam_epsilon: float = 1e-8
    """AdamW epsilon."""

    max_grad_norm: float = Field(default=1.0, gt=0.0)
    """Gradient clipping threshold (global L2 norm)."""

    global_batch_size_samples: int = Field(gt=0)
    """Samples per optimizer step over all ranks; must equal micro-batch x accumulation x world size."""

    micro_batch_size_samples: int = Field(gt=0)
    """Samples per rank per forward/backward; accumulation steps are derived from the world size."""

    template: Literal["plain", "vicuna_v1"]
    """Prompt template: "plain" (captions, stages 1-2, base-llm) or "vicuna_v1" (conversations, stage 3)."""

    max_sequence_length_tokens: int = Field(gt=8)
    """Text tokens per sample (its ``<image>`` counted once), as upstream's ``model_max_length``: the text is
    truncated to this, then the image's visual block is expanded, so a sequence may reach this - 1 + the
    visual tokens (2,647 for a square 672 px image at 2,048). See ``max_length_counts_visual_tokens``."""

    max_length_counts_visual_tokens: bool = False
    """Make ``max_sequence_length_tokens`` a limit on the whole sequence, visual tokens included (text after the
    image is cut to fit; a sample whose visual block does not fit is an error). Off: upstream's rule."""

    precision: Literal["fp32", "bf16"] = "fp32"
    """Compute precision; bf16 needs a device that supports it (CPU runs use fp32)."""

    gradient_checkpointing: bool = False
    """Recompute decoder activations in the backward pass (EVE-7B trains with it on)."""

    zero_stage: int = Field(default=0, ge=0, le=3)
    """DeepSpeed ZeRO stage; the JSON template is ``infra/deepspeed/zero<stage>.json``."""

    zero_offload: bool = False
    """Offload optimizer state and parameters to CPU (``zero3_offload.json``); ZeRO-3 only."""

    deepspeed_config_path: str | None = None
    """Use this DeepSpeed JSON instead of the bundled template (batch sizes and precision are still
    filled in from this config)."""

    checkpoint_interval_steps: int = Field(default=50, gt=0)
    """Write a resumable DeepSpeed checkpoint every this many optimizer steps."""

    keep_last_checkpoints: int = Field(default=2, ge=1)
    """Older step checkpoints are deleted once a newer one is complete."""

    max_steps: int | None = Field(default=None, gt=0)
    """Stop after this many optimizer steps (caps ``num_epochs`` when both are set)."""

    num_epochs: int | None = Field(default=None, gt=0)
    """Passes over the dataset; the trailing partial global batch of each epoch is dropped."""

    shuffle_block_shards: int = Field(default=4, gt=0)
    """Samples are shuffled within blocks of this many shards (shard order is shuffled too), so a
    rank holds at most one block in memory however large the dataset is."""

    seed: int = 0
    """Seed for model init, sample order and any randomness in the step."""

    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    """W&B mode: offline by default (``wandb sync`` later), online when a key is configured."""

    wandb_project: str = "eve-retrain"
    """W&B project name."""

    wandb_dir: str | None = None
    """Where W&B writes its runs; None means ``<EVE_HOME>/wandb``."""

    wandb_group: str | None = None
    """W&B group of the run: the retrain's flow run name, so every stage (and the evaluation) of one
    retrain is one group; None outside a retrain."""

    wandb_tags: list[str] = Field(default_factory=list)
    """W&B tags, e.g. ``recipe:demo``, ``stage:2``, ``dataset:<first 12 hex of its hash>``."""

    progress_interval_seconds: float = Field(default=10.0, gt=0)
    """Rank 0 prints a progress line (step, loss, samples/s, ETA; ``eve_model.training.progress``) at the
    first and last step and at most this often in between."""

    record_data_order: bool = False
    """Write the sample keys each rank consumed per step to ``data_order.rank<R>.jsonl`` (audits, tests)."""

    log_interval_steps: int = Field(default=1, gt=0)
    """Write a metrics.jsonl line / W&B log every this many steps."""

    teacher_feature_cache_dir: str | None = None
    """Memoise the frozen teacher's features per image on disk here (``eve_model.teacher_cache``);
    None recomputes them every step. A pure memo, so it is outside the content hash. On for the
    embedded default, where the teacher dominates a step; off for 7B (terabytes of features)."""

    checkpoint_interval_minutes: float | None = Field(default=60, gt=0)
    """Also write a checkpoint once this many minutes of training passed since the last one (rank
    0's clock, agreed by all ranks at a step boundary); None: steps only. The default, an hour of
    work, bounds what a crash loses when steps are long (EVE-7B: ~5 s a step, so the release
    scripts' 7,813 steps are ~11 h)."""

    data_loader_workers: int = Field(default=0, ge=0)
    """Processes per rank that read, decode and collate the next steps' micro-batches ahead of the
    training loop (0: on the training thread). They ignore SIGTERM/SIGUSR1 so a flush never waits
    for them."""

    data_prefetch_steps: int = Field(default=2, ge=1)
    """Steps each loader worker prepares ahead (only with ``data_loader_workers`` > 0)."""

    group_by_modality_length: bool = False
    """SFT sampler of LLaVA/EVE (``group_by_modality_length``): each global batch holds only image
    samples or only text-only samples, sorted by length, so micro-batches pad less; the batches are
    then shuffled. Deterministic per (seed, epoch, shuffle block), so resume stays exact."""

    @field_validator("stage", mode="before")
    @classmethod
    def _stage_from_number(cls, value: Any) -> Any:
        return StageId.parse(value) if isinstance(value, (int, str)) else value

    @model_validator(mode="after")
    def _check_consistency(self) -> "StageConfig":
        if self.max_steps is None and self.num_epochs is None:
            raise ValueError("set max_steps or num_epochs (or both: max_steps caps the epochs)")
        if self.stage != StageId.BASE_LLM and not self.init_checkpoint:
            raise ValueError(
                f"stage {self.stage} needs init_checkpoint: "
                + ("a base LLM directory" if self.stage == StageId.PREALIGN else f"the stage-{self.stage.previous} output")
            )
        if self.stage == StageId.BASE_LLM and tuple(self.trainable_groups) != ("llm",):
            raise ValueError('stage "base-llm" trains the text decoder only: trainable_groups must be ["llm"]')
        if self.stage == StageId.PREALIGN and "llm" in self.trainable_groups:
            raise ValueError("stage 1 (pre-align) keeps the LLM frozen: remove 'llm' from trainable_groups")
        if not self.trainable_groups:
            raise ValueError("trainable_groups is empty: nothing would train")
        missing = [group for group in self.trainable_groups if group not in self.learning_rates]
        if missing:
            raise ValueError(f"no learning rate for trainable group(s) {missing}")
        if self.stage == StageId.SFT and self.template != "vicuna_v1":
            raise ValueError("stage 3 (SFT) trains on conversations: template must be 'vicuna_v1'")
        if self.stage != StageId.SFT and self.template != "plain":
            raise ValueError(f"stage {self.stage} trains on captions: template must be 'plain'")
        if self.zero_offload and self.zero_stage != 3:
            raise ValueError("zero_offload needs zero_stage 3 (the zero3_offload.json template)")
        return self

    # ---- derived values -------------------------------------------------------------------

    def gradient_accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per rank per step; raises ``StageConfigError`` if the batch does not divide."""
        per_step = self.micro_batch_size_samples * world_size
        if self.global_batch_size_samples % per_step:
            raise StageConfigError(
                f"global_batch_size_samples={self.global_batch_size_samples} is not divisible by "
                f"micro_batch_size_samples={self.micro_batch_size_samples} x world size {world_size} "
                f"(= {per_step}); pick a global batch that is a multiple of {per_step}"
            )
        return self.global_batch_size_samples // per_step

    def total_steps(self, num_samples: int) -> int:
        """Optimizer steps this stage runs on a dataset of ``num_samples`` samples."""
        steps_per_epoch = num_samples // self.global_batch_size_samples
        if steps_per_epoch == 0:
            raise StageConfigError(
                f"the dataset has {num_samples} samples, fewer than one global batch "
                f"({self.global_batch_size_samples})"
            )
        candidates = []
        if self.num_epochs is not None:
            candidates.append(self.num_epochs * steps_per_epoch)
        if self.max_steps is not None:
            candidates.append(self.max_steps)
        return min(candidates)

    def warmup_steps(self, total_steps: int) -> int:
        return math.ceil(self.warmup_ratio * total_steps)

    def deepspeed_template_name(self) -> str:
        return "zero3_offload.json" if self.zero_offload else f"zero{self.zero_stage}.json"

    # ---- identity -------------------------------------------------------------------------

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def content_hash(self) -> str:
        """sha256 over the fields that change what the stage computes (not names, paths or logging)."""
        semantic = {k: v for k, v in self.to_json_dict().items() if k not in _NON_SEMANTIC_FIELDS}
        canonical = json.dumps(semantic, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> "StageConfig":
        """Parse a stage config file; unreadable JSON becomes a ``StageConfigError``."""
        path = Path(path)
        try:
            payload = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise StageConfigError(f"stage config {path} does not exist") from exc
        except json.JSONDecodeError as exc:
            raise StageConfigError(f"stage config {path} is not valid JSON: {exc}") from exc
        return cls.model_validate(payload)


# ---- overrides -------------------------------------------------------------------------------

_PLACED_BY_THE_PLATFORM = frozenset({"stage", "output_dir", "dataset_location", "dataset_hash", "init_checkpoint"})


def _override_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, info in StageConfig.model_fields.items():
        if name in _PLACED_BY_THE_PLATFORM:
            continue
        fields[name] = (info.annotation | None, Field(default=None, description=info.description))
    return fields


StageOverrides = create_model(
    "StageOverrides",
    __config__=ConfigDict(extra="forbid", frozen=True),
    __doc__=(
        "Per-stage changes to a preset's ``StageConfig``: every tunable field of ``StageConfig`` (same "
        "type and meaning), None meaning \"as the preset says\". Where a stage runs and on what "
        "(output folder, dataset, init checkpoint) is placed by the platform, not overridden."
    ),
    **_override_fields(),
)
"""Typed per-stage overrides, derived from ``StageConfig`` so the two never drift apart."""


def overrides_as_kwargs(overrides: Any) -> dict[str, Any]:
    """The fields an override sets (None fields left out), as keyword arguments for a preset."""
    if overrides is None:
        return {}
    return {name: value for name, value in overrides if value is not None}


# ---- presets ---------------------------------------------------------------------------------

_S = StageId
_STAGE_TEMPLATES: dict[StageId, Literal["plain", "vicuna_v1"]] = {
    _S.BASE_LLM: "plain",
    _S.PREALIGN: "plain",
    _S.PRETRAIN: "plain",
    _S.SFT: "vicuna_v1",
}
_STAGE_GROUPS: dict[StageId, tuple[ParameterGroupName, ...]] = {
    _S.BASE_LLM: ("llm",),
    _S.PREALIGN: ("pel", "aligning"),
    _S.PRETRAIN: ("pel", "aligning", "llm"),
    _S.SFT: ("pel", "aligning", "llm"),
}


def tiny_stage_config(
    stage: StageId | str,
    output_dir: str,
    dataset_location: str,
    dataset_hash: str | None = None,
    init_checkpoint: str | None = None,
    **overrides: Any,
) -> StageConfig:
    """The embedded default: ``EveConfig.tiny()`` on CPU, 2 gloo ranks, ZeRO-0, fp32, a stage in
    well under a minute of compute. LR ratios follow the paper (stage 1 = 10x stage 2 = 20x stage 3)."""
    stage = StageId.parse(stage)
    peak_lr = {_S.BASE_LLM: 3e-3, _S.PREALIGN: 4e-3, _S.PRETRAIN: 4e-4, _S.SFT: 2e-4}[stage]
    values: dict[str, Any] = dict(
        stage=stage,
        run_name=f"tiny-stage-{stage}",
        output_dir=output_dir,
        init_checkpoint=init_checkpoint,
        dataset_location=dataset_location,
        dataset_hash=dataset_hash,
        model_preset="tiny",
        trainable_groups=_STAGE_GROUPS[stage],
        learning_rates={group: peak_lr for group in _STAGE_GROUPS[stage]},
        warmup_ratio={_S.BASE_LLM: 0.05, _S.PREALIGN: 0.03, _S.PRETRAIN: 0.01, _S.SFT: 0.01}[stage],
        weight_decay=0.0,
        global_batch_size_samples=8,
        micro_batch_size_samples=2,
        template=_STAGE_TEMPLATES[stage],
        max_sequence_length_tokens=128,
        precision="fp32",
        zero_stage=0,
        checkpoint_interval_steps=10,
        max_steps={_S.BASE_LLM: 60, _S.PREALIGN: 20, _S.PRETRAIN: 20, _S.SFT: 20}[stage],
        num_epochs=None,
        seed=0,
    )
    values.update(overrides)
    return StageConfig(**values)


def eve_7b_stage_config(
    stage: StageId | str,
    output_dir: str,
    dataset_location: str,
    dataset_hash: str | None = None,
    init_checkpoint: str | None = None,
    **overrides: Any,
) -> StageConfig:
    """EVE-7B as in the paper (P1 Table 8): global batch 512/512/128, peak LR 4e-4/4e-5/2e-5,
    warm-up 0.03/0.01/0.01, seq 2048, 1 epoch, AdamW, wd 0, ZeRO-3, bf16. Micro-batch 16/16/4 as in
    the release scripts (32 GPUs x accumulation 1; fewer GPUs accumulate more)."""
    stage = StageId.parse(stage)
    if stage == StageId.BASE_LLM:
        raise StageConfigError("eve_7b starts from a pretrained LLM directory (Vicuna-7B); there is no base-llm stage")
    values: dict[str, Any] = dict(
        stage=stage,
        run_name=f"eve-7b-stage-{stage}",
        output_dir=output_dir,
        init_checkpoint=init_checkpoint,
        dataset_location=dataset_location,
        dataset_hash=dataset_hash,
        model_preset="eve_7b",
        trainable_groups=_STAGE_GROUPS[stage],
        learning_rates={group: {_S.PREALIGN: 4e-4, _S.PRETRAIN: 4e-5, _S.SFT: 2e-5}[stage] for group in _STAGE_GROUPS[stage]},
        warmup_ratio={_S.PREALIGN: 0.03, _S.PRETRAIN: 0.01, _S.SFT: 0.01}[stage],
        weight_decay=0.0,
        global_batch_size_samples={_S.PREALIGN: 512, _S.PRETRAIN: 512, _S.SFT: 128}[stage],
        micro_batch_size_samples={_S.PREALIGN: 16, _S.PRETRAIN: 16, _S.SFT: 4}[stage],
        template=_STAGE_TEMPLATES[stage],
        max_sequence_length_tokens=2048,
        precision="bf16",
        gradient_checkpointing=True,
        zero_stage=3,
        # ~4M samples between checkpoints in stages 1-2, as the release scripts (save_steps 7813).
        checkpoint_interval_steps={_S.PREALIGN: 7813, _S.PRETRAIN: 7813, _S.SFT: 1000}[stage],
        max_steps=None,
        num_epochs=1,
        seed=42,
    )
    values.update(overrides)
    return StageConfig(**values)


def eve_7b_hd_stage_config(
    stage: StageId | str,
    output_dir: str,
    dataset_location: str,
    dataset_hash: str | None = None,
    init_checkpoint: str | None = None,
    **overrides: Any,
) -> StageConfig:
    """EVE-7B-HD as upstream trained it (``eve7b_finetune_hd.sh``): stages 1-2 are EVE-7B's (672 px), stage 3
    fine-tunes that stage-2 model at 1344 px (``EveConfig.eve_7b_hd``: 48 x 48 cells pooled 2 x 2 onto CLIP's
    24 x 24) with a 4,096-token text limit, micro-batch 2 and 2 accumulation steps on 32 GPUs (global batch
    128 = 2 x 2 x 32; other world sizes accumulate to the same global batch)."""
    stage = StageId.parse(stage)
    values: dict[str, Any] = dict(run_name=f"eve-7b-hd-stage-{stage}")
    if stage == StageId.SFT:
        values.update(model_preset="eve_7b_hd", max_sequence_length_tokens=4096, micro_batch_size_samples=2)
    values.update(overrides)
    return eve_7b_stage_config(stage, output_dir, dataset_location, dataset_hash, init_checkpoint, **values)


PRESETS = {"tiny": tiny_stage_config, "eve_7b": eve_7b_stage_config, "eve_7b_hd": eve_7b_hd_stage_config}


def preset_stage_config(preset: str, stage: StageId | str, **kwargs: Any) -> StageConfig:
    """Look a preset up by name (``tiny``, ``eve_7b`` or ``eve_7b_hd``) and build the stage's config."""
    if preset not in PRESETS:
        raise StageConfigError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[preset](stage, **kwargs)


__all__ = [
    "PRESETS",
    "StageConfig",
    "StagePresetName",
    "StageConfigError",
    "StageId",
    "StageOverrides",
    "eve_7b_hd_stage_config",
    "eve_7b_stage_config",
    "overrides_as_kwargs",
    "preset_stage_config",
    "tiny_stage_config",
]
