"""EVE under ``torch.autocast`` (CPU, bf16): forward, backward and generate run, and stay within bf16
tolerance of fp32 (issue: the PEL's sequence buffer took the cells' bf16 while class and separator stayed fp32)."""

from __future__ import annotations

import pytest
import torch

from eve_model.configuration_eve import EveConfig
from eve_model.processing_eve import EveProcessor
from tests.eve_model.test_modeling import FrozenRandomTeacher, mixed_batch, noise_image
from tests.fixtures.tiny_eve import build_tiny_eve

pytestmark = pytest.mark.usefixtures("single_torch_thread")

BF16_RTOL = BF16_ATOL = 3e-2
"""bf16 keeps 8 significant bits (relative step 2**-8 = 0.4%); through a 4-layer decoder the logits of the
tiny model stay within ~1% of fp32, the bound leaves room for other CPUs' kernels."""


def batch_with_alignment(processor: EveProcessor) -> dict[str, torch.Tensor]:
    batch = mixed_batch(processor)  # landscape, text only, 1:8 portrait, square
    batch.pop("image_grid_hw")
    return batch


@pytest.fixture(scope="module")
def processor() -> EveProcessor:
    return EveProcessor.from_eve_config(EveConfig.tiny(), max_length=256)


def test_forward_and_backward_under_bf16_autocast_stay_close_to_fp32(processor):
    model = build_tiny_eve()
    model.enable_alignment(FrozenRandomTeacher())
    batch = batch_with_alignment(processor)
    reference = model(**batch)
    reference.loss.backward()
    fp32_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(**batch)
    assert output.logits.dtype == torch.bfloat16  # autocast really ran the decoder in bf16
    output.loss.backward()
    torch.testing.assert_close(output.logits.float(), reference.logits, rtol=BF16_RTOL, atol=BF16_ATOL)
    for name in ("loss", "ce_loss", "alignment_loss"):
        torch.testing.assert_close(getattr(output, name).float(), getattr(reference, name), rtol=1e-2, atol=1e-2)
    for name, parameter in model.named_parameters():
        if name not in fp32_grads:
            continue
        assert torch.isfinite(parameter.grad).all(), name
        if name.startswith("patch_embedding"):  # the module that crashed: its gradients point the same way
            cosine = torch.nn.functional.cosine_similarity(parameter.grad.flatten().float(), fp32_grads[name].flatten(), dim=0)
            assert cosine > 0.98, (name, float(cosine))


def test_pel_output_under_autocast_matches_fp32_within_bf16_tolerance(processor):
    model = build_tiny_eve().eval()
    pixels = processor.image_processor([noise_image(640, 480, 1), None, noise_image(40, 320, 2)])["pixel_values"]
    with torch.no_grad():
        reference = model.patch_embedding(pixels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            visual = model.patch_embedding(pixels)
    assert torch.equal(visual.lengths, reference.lengths) and torch.equal(visual.grid_hw, reference.grid_hw)
    torch.testing.assert_close(visual.embeddings.float(), reference.embeddings, rtol=BF16_RTOL, atol=BF16_ATOL)


def test_generate_under_bf16_autocast(processor):
    model = build_tiny_eve().eval()
    batch = processor.for_generation([noise_image(64, 64, 3), None],
                                     [processor.prompt("What is this?"), processor.prompt("Say hi", with_image=False)])
    batch.pop("teacher_pixel_values")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert output.shape == (2, batch["input_ids"].shape[1] + 5)
    assert torch.equal(output[:, : batch["input_ids"].shape[1]], batch["input_ids"])
