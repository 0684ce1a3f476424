"""The retrain's parameters: typed pydantic models that Prefect validates and draws as forms.

Named, complete parameter sets (the embedded demo, the paper's recipe on SLURM or Kubernetes) are
functions in ``flows/recipes.py``; a configuration file (``eve retrain --config``) is read into these
same models. The defaults here are production defaults for a team's own data (validation, curation
and the caption gate's teacher-caption profile); the data itself has no default: a configuration
names its sources, a registered version, or the demo source.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from eve_model.training.config import StageId
from flows.data_flow import DataFlowParams
from tasks.caption.config import CaptionConfig
from tasks.data.sft_mixture import SftMixtureConfig
from tasks.evaluate.gates import GatePolicy
from tasks.evaluate.harness import HarnessConfig
from tasks.quality.config import CaptionGateThresholds, InstructionGateThresholds
from tasks.stages import TrainingParameters


class EvaluationParameters(BaseModel):
    """Evaluation suites and the gate policy."""

    harness: HarnessConfig = Field(default_factory=lambda: HarnessConfig(batch_size=16, max_new_tokens=16))
    """Decoding settings."""

    gate: GatePolicy = Field(default_factory=GatePolicy)
    """Absolute minimums, non-regression against production, aggregate rule, contamination."""

    eval_questions_path: str | None = None
    """Held-out VQA JSONL (question_id, image, question, answer, question_type; images relative to
    it) on images kept out of training; None: the demo's (only with the demo source). A
    ``captions.jsonl`` (image, caption) next to it is the held-out text for perplexity."""

    near_duplicate_threshold: float = Field(default=0.95, gt=0, le=1)
    """Teacher-embedding cosine at or above which an evaluation image counts as seen in training."""


class PromotionParameters(BaseModel):
    """How the retrain hands over to the waiting promotion. Who may approve, and who asked, are not
    parameters: the policy is platform configuration (``eve policy``) and the requester is the
    authenticated account that started the run (docs/security.md)."""

    mode: Literal["wait", "detached", "skip"] = "detached"
    """wait: run the promotion as a subflow and block until decided; detached: start it on the
    promotion deployment (a worker owns the waiting run) and finish; skip: register only."""


class RetrainParameters(BaseModel):
    """One end-to-end retrain."""

    data: DataFlowParams
    """Sources (or registered versions), validation, curation, and where the ingests run (``data.executor``:
    in-process, or shard-parallel on Dask over SLURM or Kubernetes; docs/data-at-scale.md)."""

    captions: CaptionConfig = Field(default_factory=CaptionConfig)
    """Teacher captioning backend."""

    caption_quality: CaptionGateThresholds = Field(default_factory=CaptionGateThresholds)
    """Caption suite thresholds (stages 1-2 data)."""

    instruction_quality: InstructionGateThresholds = Field(default_factory=InstructionGateThresholds)
    """Instruction suite thresholds (stage 3 data)."""

    sft_mixture: SftMixtureConfig = Field(default_factory=SftMixtureConfig)
    """How many caption conversations and text-only turns join the instruction data in stage 3."""

    training: TrainingParameters = Field(default_factory=TrainingParameters)
    """Stage presets, backend and resources."""

    evaluation: EvaluationParameters = Field(default_factory=EvaluationParameters)
    """Suites and gate."""

    promotion: PromotionParameters = Field(default_factory=PromotionParameters)
    """Approval policy."""

    def missing_for_training(self) -> list[str]:
        """What a retrain that trains needs and these parameters lack, one line per field (a data-only
        run needs neither): stage 3's conversations and the held-out evaluation questions."""
        data, missing = self.data, []
        if StageId.SFT in self.training.stage_order and not (data.use_demo_source or data.sft_sources or data.sft_dataset):
            missing.append("data.sft_sources: stage 3 (SFT) trains on conversations; name a LLaVA-style source "
                           "(image + conversations: a .json list or .jsonl records file) or a registered version "
                           "(data.sft_dataset)")
        if not data.use_demo_source and self.evaluation.eval_questions_path is None:
            missing.append("evaluation.eval_questions_path: held-out questions on images kept out of training are "
                           "needed to evaluate the candidate (JSONL: question_id, image, question, answer, question_type)")
        return missing

    recipe_name: str = Field(default="custom", pattern=r"^[a-z0-9][a-z0-9-]*$")
    """The recipe these parameters came from (``flows/recipes.py``: ``demo``, ``paper-slurm``...;
    ``custom`` for a hand-written set). It names the retrain's flow run (``retrain-<recipe>-<time>``)
    and tags its W&B runs; it changes nothing that is computed."""


__all__ = ["EvaluationParameters", "PromotionParameters", "RetrainParameters"]
