"""The Patch Aligning Layer's weights between stages, and ZeRO-3 parameter gathering.

The PAL is training-only and never part of the HF model directory: each stage writes it next to the
model as ``aligning_layer.safetensors`` (metadata: the hidden-state depths it reads) and the next stage
continues from it. Under ZeRO-3 a module's parameters are partitions, so reading or writing them goes
through ``deepspeed.zero.GatheredParameters`` (``gathered``); without DeepSpeed that is a no-op and
deepspeed is never imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from eve_model.modeling_eve import EveForCausalLM

ALIGNMENT_STATE_FILE = "aligning_layer.safetensors"
"""File name of the PAL weights in a stage's output (and the next stage's init) directory."""


class gathered:
    """Gather ZeRO-3 partitioned parameters for a read (or a write with ``modify``); no-op otherwise."""

    def __init__(self, parameters: list[nn.Parameter], modify: bool = False):
        self.parameters, self.modify, self.context = parameters, modify, None

    def __enter__(self):
        if any(hasattr(parameter, "ds_id") for parameter in self.parameters):
            import deepspeed

            self.context = deepspeed.zero.GatheredParameters(self.parameters, modifier_rank=0 if self.modify else None)
            self.context.__enter__()
        return self

    def __exit__(self, *exc):
        if self.context is not None:
            return self.context.__exit__(*exc)
        return False


def write_alignment_state(state: dict[str, torch.Tensor], depths: list[int] | tuple[int, ...], directory: str | Path) -> Path:
    """Write a PAL state dict (keys relative to the PAL) to ``directory/aligning_layer.safetensors``."""
    from safetensors.torch import save_file

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    target = path / ALIGNMENT_STATE_FILE
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    save_file(tensors, str(target), metadata={"depths": ",".join(map(str, depths))})
    return target


def save_alignment_state(model: "EveForCausalLM", directory: str | Path) -> Path:
    """Write ``model``'s PAL weights (gathered under ZeRO-3) to ``directory/aligning_layer.safetensors``."""
    if model.aligning_layer is None:
        raise RuntimeError("alignment is not enabled; nothing to save")
    with gathered(list(model.aligning_layer.parameters())):
        state = {name: tensor.detach().cpu().clone() for name, tensor in model.aligning_layer.state_dict().items()}
    return write_alignment_state(state, model.config.alignment_depths, directory)


def has_alignment_state(directory: str | Path) -> bool:
    return (Path(directory) / ALIGNMENT_STATE_FILE).exists()


def load_alignment_state(model: "EveForCausalLM", directory: str | Path) -> None:
    """Load ``directory/aligning_layer.safetensors`` into ``model``'s PAL (built first if the model has none;
    the teacher stays as it is)."""
    from safetensors.torch import load_file

    source = Path(directory) / ALIGNMENT_STATE_FILE
    if not source.exists():
        raise FileNotFoundError(f"no {ALIGNMENT_STATE_FILE} in {directory}")
    aligning_layer = model.build_aligning_layer()
    state = load_file(str(source), device="cpu")
    with gathered(list(aligning_layer.parameters()), modify=True):
        aligning_layer.load_state_dict(state, strict=True)


__all__ = [
    "ALIGNMENT_STATE_FILE",
    "gathered",
    "has_alignment_state",
    "load_alignment_state",
    "save_alignment_state",
    "write_alignment_state",
]
