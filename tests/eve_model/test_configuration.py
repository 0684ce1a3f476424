"""EveConfig presets, geometry invariants and HF round trips."""

from __future__ import annotations

import pytest
from transformers import AutoConfig

import eve_model
from eve_model.configuration_eve import EveConfig
from eve_model.tokenizer import load_tiny_tokenizer


def test_tiny_preset_matches_bundled_tokenizer_and_teacher_grid():
    config = EveConfig.tiny()
    tokenizer = load_tiny_tokenizer()
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<image>")
    assert len(tokenizer) <= config.text_config.vocab_size
    # 32 px student cells at 96 px -> 3x3 (one per cell of the demo's 3x3 scenes), the EfficientNet-Lite0 final
    # grid at 96 px (stride 32).
    assert config.student_cell_px == 32 and config.student_max_grid == 3
    assert config.teacher_cell_px == 32 and config.teacher_grid_size == 3
    assert config.patch_ratio == 1
    assert config.alignment_depths == [4, 2, 0]


def test_hd_presets_pool_two_by_two():
    assert EveConfig.tiny_hd().student_max_grid == 6 and EveConfig.tiny_hd().patch_ratio == 2
    assert EveConfig.eve_7b_hd().student_max_grid == 48 and EveConfig.eve_7b_hd().patch_ratio == 2


def test_eve_7b_has_paper_values():
    config = EveConfig.eve_7b()
    text = config.text_config
    assert (text.num_hidden_layers, text.hidden_size, text.num_attention_heads, text.intermediate_size, text.vocab_size) == (
        32, 4096, 32, 11008, 32000)
    assert (config.pel_width, config.pel_num_heads, config.patch_size, config.pool_stride) == (1024, 8, 14, 2)
    assert config.image_max_side == 672 and config.student_max_grid == 24 == config.teacher_grid_size
    assert config.teacher_kind == "clip" and config.teacher_select_layer == -2 and config.teacher_image_size == 336
    assert config.alignment_depths == [32, 28, 24, 20, 16, 12, 8, 4, 0]
    assert config.projector_hidden_size == 4096 and config.alignment_loss_weight == 1.0


def test_round_trip_through_auto_config(tmp_path):
    eve_model.register_auto_classes()
    config = EveConfig.tiny_hd(alignment_loss_weight=0.5)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, EveConfig)
    without_path = lambda values: {k: v for k, v in values.items() if k != "_name_or_path"}  # noqa: E731
    assert without_path(loaded.to_dict()) == without_path(config.to_dict())
    assert loaded.text_config.hidden_size == 128 and loaded.patch_ratio == 2


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"image_max_side": 120}, "is not a multiple of patch"),
        ({"image_max_side": 128}, "teacher grid"),
        ({"alignment_depth_interval": 3}, "alignment_depth_interval"),
        ({"teacher_kind": "resnet"}, "teacher_kind"),
    ],
)
def test_inconsistent_geometry_is_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        EveConfig.tiny(**overrides)
