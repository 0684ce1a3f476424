"""Stage presets build what they say: the EVE-7B-HD recipe (built on the meta device), every stage's model from
``model_preset`` + ``model_overrides`` (stages 2-3 included), and ``tiny_hd`` stages 2-3 that really train at
their own 192 px canvas from a 96 px stage 1, as EVE-7B-HD's stage 3 starts from the 672 px stage 2."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from eve_model.configuration_eve import EveConfig
from eve_model.geometry import visual_token_count
from eve_model.modeling_eve import EveForCausalLM
from eve_model.processing_eve import EveImageProcessor, EveInputError, EveProcessor
from eve_model.tokenizer import load_tiny_tokenizer
from eve_model.training.config import StageConfigError, eve_7b_hd_stage_config, eve_7b_stage_config, tiny_stage_config


def test_the_hd_recipe_is_a_preset_that_builds_on_the_meta_device():
    stages = {stage: eve_7b_hd_stage_config(stage, "/out", "/data", init_checkpoint="/init") for stage in ("1", "2", "3")}
    for stage in ("1", "2"):  # upstream's HD model shares EVE-7B's pre-training at 672 px
        plain = eve_7b_stage_config(stage, "/out", "/data", init_checkpoint="/init")
        assert stages[stage].model_dump(exclude={"run_name"}) == plain.model_dump(exclude={"run_name"})
    sft = stages["3"]
    assert sft.model_preset == "eve_7b_hd" and sft.max_sequence_length_tokens == 4096
    assert (sft.global_batch_size_samples, sft.micro_batch_size_samples, sft.gradient_accumulation_steps(32)) == (128, 2, 2)
    assert sft.learning_rates == {"pel": 2e-5, "aligning": 2e-5, "llm": 2e-5} and sft.precision == "bf16"

    config = EveConfig.eve_7b_hd()
    with torch.device("meta"):
        hd, plain = EveForCausalLM(config), EveForCausalLM(EveConfig.eve_7b())
    assert config.image_max_side == 1344 and config.student_max_grid == 48 and config.patch_ratio == 2
    count = sum(p.numel() for p in hd.parameters())
    assert 6.7e9 < count < 6.8e9 and count == sum(p.numel() for p in plain.parameters())  # same network, other canvas


def test_an_hd_image_sample_fits_the_hd_recipe_and_no_longer_the_old_rule():
    """One square HD image is 2,353 visual tokens: under the old rule (2,048 counting them) every HD image
    sample was refused; the HD preset's 4,096-token text limit, counted as upstream does, keeps it whole."""
    image_processor = EveImageProcessor.from_eve_config(EveConfig.eve_7b_hd())
    tokenizer = load_tiny_tokenizer()
    sample = {"key": "hd-0", "image": Image.new("RGB", (2000, 2000), (200, 30, 30)),
              "caption": "a large red square " * 400}  # ~2,000 text tokens
    batch = EveProcessor(image_processor, tokenizer, max_length=4096)([sample], "plain")
    visual = visual_token_count(48, 48)
    assert visual == 2353 and batch["image_grid_hw"][0].tolist() == [48, 48]
    text_tokens = len(tokenizer(sample["caption"] + "\n", add_special_tokens=False)["input_ids"]) + 1  # + BOS
    assert batch["input_ids"].shape[1] == text_tokens + visual  # nothing cut: text under 4,096, block after it
    with pytest.raises(EveInputError, match="2353 visual tokens .* do not fit max_length 2048"):
        EveProcessor(image_processor, tokenizer, max_length=2048, max_length_counts_visual_tokens=True)([sample], "plain")


@pytest.mark.slow
def test_tiny_hd_trains_stages_2_and_3_at_its_own_canvas_from_a_96_px_stage_1(tmp_path):
    from transformers import LlamaForCausalLM

    from eve_model.model_card import read_model_card_sections
    from eve_model.training.stage_model import build_stage_model
    from tests.eve_model.training_datasets import read_jsonl, run_stage, write_tiny_dataset

    home = tmp_path / "home"
    home.mkdir()
    manifest = write_tiny_dataset(tmp_path / "ds", num_samples=8, items_per_shard=8)
    base = tmp_path / "llama"
    torch.manual_seed(0)
    LlamaForCausalLM(EveConfig.tiny().text_config).save_pretrained(base)
    load_tiny_tokenizer().save_pretrained(base)
    common = dict(global_batch_size_samples=4, micro_batch_size_samples=2, max_steps=2, wandb_mode="disabled")

    parent = str(base)
    for stage, preset in (("1", "tiny"), ("2", "tiny_hd"), ("3", "tiny_hd")):
        config = tiny_stage_config(stage, str(tmp_path / f"stage-{stage}"), str(tmp_path / "ds"), manifest.dataset_hash,
                                   init_checkpoint=parent, model_preset=preset, **common)
        result = run_stage(config, tmp_path / f"stage-{stage}.json", home, nproc=1)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        final = tmp_path / f"stage-{stage}" / "final"
        saved = json.loads((final / "config.json").read_text())
        image_processor = json.loads((final / "preprocessor_config.json").read_text())
        side = 96 if preset == "tiny" else 192
        assert saved["image_max_side"] == image_processor["image_max_side"] == side, stage
        metrics = read_jsonl(tmp_path / f"stage-{stage}" / "metrics.jsonl")
        assert len(metrics) == 2 and all(m["alignment_loss"] is not None for m in metrics)
        sections = read_model_card_sections(final)
        assert manifest.dataset_hash in sections["Training data"] and f"`{preset}`" in sections["Training procedure"]
        assert "loss: first / last" in sections["Training metrics"]
        parent = str(final)

    # What stage 3 trained on: 192 px canvases, 6 x 6 student grids pooled 2 x 2 onto the 3 x 3 teacher.
    stage3 = build_stage_model(tiny_stage_config("3", str(tmp_path / "probe"), str(tmp_path / "ds"), manifest.dataset_hash,
                                                 init_checkpoint=parent, model_preset="tiny_hd"))
    from eve_model.shards import iter_samples

    batch = stage3.collate(list(iter_samples(str(tmp_path / "ds")))[:2])
    assert batch["pixel_values"].shape[-1] == 192 and stage3.model.config.patch_ratio == 2
    # A stage may change the canvas but not the network: a narrower PEL than the checkpoint's is refused.
    with pytest.raises(StageConfigError, match="pel_width: checkpoint 64, stage 32"):
        build_stage_model(tiny_stage_config("3", str(tmp_path / "bad"), str(tmp_path / "ds"), manifest.dataset_hash,
                                            init_checkpoint=parent, model_preset="tiny_hd", model_overrides={"pel_width": 32}))
