"""The teacher feature cache is a pure memo: same targets as the teacher, each image computed once,
robust to a damaged entry, and invisible to the optimiser, DeepSpeed and the saved checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from eve_model.configuration_eve import EveConfig
from eve_model.processing_eve import EveImageProcessor
from eve_model.teacher_cache import CachedTeacher
from eve_model.teachers import build_teacher


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def teacher():
    return build_teacher(EveConfig.tiny())


def _pixels(*seeds: int, width: int = 160, height: int = 120) -> torch.Tensor:
    images = [
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8), mode="RGB")
        for seed in seeds
    ]
    return EveImageProcessor.from_eve_config(EveConfig.tiny())(images)["teacher_pixel_values"]


def test_cached_features_equal_the_teacher_and_each_image_is_computed_once(teacher, tmp_path):
    cached = CachedTeacher(teacher, tmp_path)
    first = _pixels(0, 1)
    features, valid = cached(first)
    reference_features, reference_valid = teacher(first)
    assert torch.equal(valid, reference_valid)
    torch.testing.assert_close(features, reference_features, rtol=1e-5, atol=1e-5)
    assert (cached.hits, cached.misses) == (0, 2)

    # One known image and one new one in a batch: only the new one runs through the teacher.
    mixed = torch.cat([first[1:], _pixels(2)])
    mixed_features, _ = cached(mixed)
    assert (cached.hits, cached.misses) == (1, 3)
    assert torch.equal(mixed_features[0], features[1])  # a hit returns the stored tensor bit for bit

    # A fresh wrapper (another process, a later stage) finds the entries on disk.
    again = CachedTeacher(teacher, tmp_path)
    again_features, _ = again(first)
    assert (again.hits, again.misses) == (2, 0)
    assert torch.equal(again_features, features)


def test_key_depends_on_the_pixels_and_the_teacher_weights(teacher, tmp_path):
    cached = CachedTeacher(teacher, tmp_path)
    pixels = _pixels(0, 0, 1)
    keys = [cached.key(row) for row in pixels]
    assert keys[0] == keys[1] != keys[2]
    other_weights = CachedTeacher(teacher, tmp_path)
    other_weights.weights_sha256 = "0" * 64
    assert other_weights.key(pixels[0]) != keys[0]


def test_a_damaged_entry_is_recomputed_not_returned(teacher, tmp_path):
    cached = CachedTeacher(teacher, tmp_path)
    pixels = _pixels(3)
    features, _ = cached(pixels)
    entry = next(tmp_path.rglob("*.safetensors"))
    entry.write_bytes(entry.read_bytes()[:100])  # a torn write
    recomputed, _ = CachedTeacher(teacher, tmp_path)(pixels)
    torch.testing.assert_close(recomputed, features, rtol=1e-5, atol=1e-5)
    assert CachedTeacher(teacher, tmp_path)(pixels)[0].shape == features.shape  # the entry was rewritten whole


def test_the_cached_teacher_is_outside_the_trainable_module_tree(tmp_path):
    from eve_model.modeling_eve import EveForCausalLM

    model = EveForCausalLM(EveConfig.tiny())
    model.enable_alignment(teacher_feature_cache_dir=tmp_path)
    assert isinstance(model.teacher, CachedTeacher)
    names = [name for name, _ in model.named_parameters()] + list(model.state_dict())
    assert not any(name.startswith("teacher.") for name in names)  # DeepSpeed never partitions it
    assert not any(p.requires_grad for p in model.teacher.inner.parameters())
