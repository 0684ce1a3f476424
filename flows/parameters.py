"""The retrain's parameters: typed pydantic models that Prefect validates and draws as forms.

Named, complete parameter sets (the embedded demo, the paper's recipe on SLURM or Kubernetes) are
functions in ``flows/recipes.py``; the defaults here are the demo's.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from flows.data_flow import DataFlowParams
from tasks.caption.config import CaptionConfig
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
    """Held-out VQA JSONL (question_id, image, question, answer, question_type); None: the demo's."""

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

    data: DataFlowParams = Field(default_factory=DataFlowParams.demo)
    """Sources, validation, curation."""

    captions: CaptionConfig = Field(default_factory=CaptionConfig)
    """Teacher captioning backend."""

    caption_quality: CaptionGateThresholds = Field(default_factory=CaptionGateThresholds)
    """Caption suite thresholds (stages 1-2 data)."""

    instruction_quality: InstructionGateThresholds = Field(default_factory=InstructionGateThresholds)
    """Instruction suite thresholds (stage 3 data)."""

    training: TrainingParameters = Field(default_factory=TrainingParameters)
    """Stage presets, backend and resources."""

    evaluation: EvaluationParameters = Field(default_factory=EvaluationParameters)
    """Suites and gate."""

    promotion: PromotionParameters = Field(default_factory=PromotionParameters)
    """Approval policy."""

    recipe_name: str = Field(default="custom", pattern=r"^[a-z0-9][a-z0-9-]*$")
    """The recipe these parameters came from (``flows/recipes.py``: ``demo``, ``paper-slurm``...;
    ``custom`` for a hand-written set). It names the retrain's flow run (``retrain-<recipe>-<time>``)
    and tags its W&B runs; it changes nothing that is computed."""


__all__ = ["EvaluationParameters", "PromotionParameters", "RetrainParameters"]
