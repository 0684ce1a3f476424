"""The SFT mixture: instruction conversations + caption conversations + text-only turns, one version with
two parents, counts that reconcile, deterministic, reused when unchanged (the lineage of a real retrain shows
both parents: tests/flows/test_retrain_e2e.py)."""

from __future__ import annotations

import pytest

from eve_model.constants import IMAGE_PLACEHOLDER
from eve_model.shards import DatasetIntegrityError, iter_samples, read_manifest
from eve_model.training.data import processor_inputs
from tasks.data.sft_mixture import SftMixtureConfig, build_sft_mixture, finished_mixture, mixture_input_key
from tests.eve_model.training_datasets import write_tiny_dataset


@pytest.fixture
def parents(tmp_path):
    instruction = write_tiny_dataset(tmp_path / "instruction", num_samples=12, items_per_shard=5, text_only_every=0)
    captions = write_tiny_dataset(tmp_path / "captions", num_samples=20, items_per_shard=8, text_only_every=0)
    return tmp_path / "instruction", tmp_path / "captions", instruction, captions


def test_the_mixture_holds_every_part_with_counts_that_reconcile(parents, tmp_path):
    instruction_dir, caption_dir, instruction, captions = parents
    config = SftMixtureConfig(caption_conversation_ratio=0.5, text_only_ratio=0.25)
    report = build_sft_mixture(instruction_dir, caption_dir, tmp_path / "mix", config)
    assert (report.num_instruction, report.num_caption_conversations, report.num_text_only) == (12, 6, 3)
    assert report.num_written == 21 and report.reconciles
    samples = list(iter_samples(tmp_path / "mix"))
    parts = {prefix: [s for s in samples if s.key.startswith(prefix)] for prefix in ("inst-", "capt-", "text-")}
    assert [len(parts[p]) for p in ("inst-", "capt-", "text-")] == [12, 6, 3]
    originals = {s.key: s for s in iter_samples(instruction_dir)}
    for sample in parts["inst-"]:  # instruction samples pass through unchanged
        original = originals[sample.key.removeprefix("inst-")]
        assert {k: v for k, v in sample.meta.items() if k != "key"} == {k: v for k, v in original.meta.items() if k != "key"}
        assert sample.image_bytes == original.image_bytes
    caption_of = {s.key: s.caption for s in iter_samples(caption_dir)}
    for sample in parts["capt-"]:  # the image, a description prompt, the caption as the answer
        human, gpt = sample.conversations
        assert sample.image_bytes is not None and human["value"].startswith(f"{IMAGE_PLACEHOLDER}\n")
        assert gpt["value"] == caption_of[sample.key.removeprefix("capt-")]
    for sample in parts["text-"]:  # no image anywhere, the description in words
        human, gpt = sample.conversations
        assert sample.image_bytes is None and IMAGE_PLACEHOLDER not in human["value"]
        assert gpt["value"] == caption_of[sample.key.removeprefix("text-")]
    # Stage 3's loader turns every part into a vicuna_v1 conversation.
    converted = processor_inputs(samples, "vicuna_v1")
    assert all(row["conversations"] for row in converted)
    assert sum(row["image"] is None for row in converted) == 3
    extra = read_manifest(tmp_path / "mix").extra["sft_mixture"]
    assert extra["parents"] == {"instruction": instruction.dataset_hash, "captions": captions.dataset_hash}
    assert extra["counts"] == {"instruction": 12, "caption_conversations": 6, "text_only": 3}


def test_same_inputs_give_the_same_dataset_and_an_intact_one_is_reused(parents, tmp_path):
    instruction_dir, caption_dir, instruction, captions = parents
    config = SftMixtureConfig()
    first = build_sft_mixture(instruction_dir, caption_dir, tmp_path / "a", config)
    second = build_sft_mixture(instruction_dir, caption_dir, tmp_path / "b", config)
    assert first.dataset_hash == second.dataset_hash
    other_seed = build_sft_mixture(instruction_dir, caption_dir, tmp_path / "c", SftMixtureConfig(seed=1))
    assert other_seed.dataset_hash != first.dataset_hash
    assert finished_mixture(tmp_path / "a", instruction.dataset_hash, captions.dataset_hash, config) == first
    assert finished_mixture(tmp_path / "a", instruction.dataset_hash, captions.dataset_hash, SftMixtureConfig(seed=1)) is None
    shard = sorted((tmp_path / "a" / "shards").iterdir())[0]
    shard.write_bytes(shard.read_bytes()[:-10])  # a damaged shard is not reused
    assert finished_mixture(tmp_path / "a", instruction.dataset_hash, captions.dataset_hash, config) is None
    assert mixture_input_key("a", "b") != mixture_input_key("b", "a")


def test_asking_for_more_captions_than_exist_is_a_clear_error_and_writes_nothing(parents, tmp_path):
    instruction_dir, caption_dir, _, _ = parents
    with pytest.raises(DatasetIntegrityError, match="24 caption conversations .* 20 captioned samples"):
        build_sft_mixture(instruction_dir, caption_dir, tmp_path / "mix", SftMixtureConfig(caption_conversation_ratio=2.0))
    assert not (tmp_path / "mix").exists()
