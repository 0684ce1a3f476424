"""EVE v1 model library (encoder-free VLM). Never imports prefect.

Names are imported lazily (PEP 562) so that light modules such as ``eve_model.shards`` do not pay for
torch/transformers. Importing ``eve_model.modeling_eve`` (or touching any model name here, e.g.
``eve_model.EveForCausalLM``) registers ``model_type="eve"`` with ``AutoConfig`` and
``AutoModelForCausalLM``, so a directory written by ``EveForCausalLM.save_pretrained`` is a standard HF model
directory: ``eve_model.register_auto_classes(); AutoModelForCausalLM.from_pretrained(path)``.
"""

from importlib import import_module
from typing import Any

from eve_model.constants import IGNORE_INDEX, IMAGE_PLACEHOLDER

_LAZY = {
    "EveConfig": "eve_model.configuration_eve",
    "EveForCausalLM": "eve_model.modeling_eve",
    "EvePreTrainedModel": "eve_model.modeling_eve",
    "EveCausalLMOutput": "eve_model.modeling_eve",
    "PatchEmbeddingLayer": "eve_model.modeling_eve",
    "PatchAligningLayer": "eve_model.modeling_eve",
    "EveImageProcessor": "eve_model.processing_eve",
    "EveProcessor": "eve_model.processing_eve",
    "EveInputError": "eve_model.processing_eve",
    "VisionTeacher": "eve_model.teacher_base",
    "build_teacher": "eve_model.teachers",
    "load_tiny_tokenizer": "eve_model.tokenizer",
}


def register_auto_classes() -> None:
    """Register EVE with transformers' Auto classes (idempotent)."""
    import_module("eve_model.modeling_eve")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        register_auto_classes()
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'eve_model' has no attribute {name!r}")


__all__ = ["IGNORE_INDEX", "IMAGE_PLACEHOLDER", "register_auto_classes", *_LAZY]
