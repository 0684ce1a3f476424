"""Sample order: deterministic from (seed, epoch), sharded over ranks without overlap, exact resume."""

from __future__ import annotations

import pytest

from eve_model.shards import read_manifest
from eve_model.training.data import LoaderPosition, ResumableShardLoader, SampleOrder, processor_inputs
from tests.eve_model.training_datasets import write_tiny_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    location = tmp_path_factory.mktemp("data") / "ds"
    write_tiny_dataset(location, num_samples=44, items_per_shard=8)  # 6 shards, the last one short
    return str(location), read_manifest(location)


def _loader(dataset, rank, world_size, global_batch=8, micro=2, seed=3, block=2):
    location, manifest = dataset
    return ResumableShardLoader(location, manifest, seed=seed, shuffle_block_shards=block,
                                global_batch_size_samples=global_batch, micro_batch_size_samples=micro,
                                rank=rank, world_size=world_size)


def _keys(step_batch):
    return [key for micro in step_batch.micro_batches for key in micro.keys]


def test_epoch_order_is_a_seeded_permutation(dataset):
    _, manifest = dataset
    order = SampleOrder(manifest, seed=3, shuffle_block_shards=2)
    first = order.epoch_order(0)
    assert sorted(first.tolist()) == list(range(44))
    assert (order.epoch_order(0) == first).all()
    assert not (order.epoch_order(1) == first).all()
    assert not (SampleOrder(manifest, seed=4, shuffle_block_shards=2).epoch_order(0) == first).all()


def test_ranks_split_each_step_without_overlap_and_cover_the_epoch(dataset):
    total_steps = 2 * (44 // 8)  # two epochs; 4 samples per epoch are dropped
    per_rank = [list(_loader(dataset, rank, 2).iter_steps(LoaderPosition(0, 0), total_steps)) for rank in (0, 1)]
    single = list(_loader(dataset, 0, 1).iter_steps(LoaderPosition(0, 0), total_steps))
    for step in range(total_steps):
        keys0, keys1 = _keys(per_rank[0][step]), _keys(per_rank[1][step])
        assert len(keys0) == len(keys1) == 4 and not set(keys0) & set(keys1)
        # The global batch of a step does not depend on the world size.
        assert keys0 + keys1 == _keys(single[step])
    for epoch in (0, 1):
        seen = [k for step in single[epoch * 5 : (epoch + 1) * 5] for k in _keys(step)]
        assert len(seen) == len(set(seen)) == 40
    assert single[5].position_after == LoaderPosition(epoch=1, sample_offset=8)


def test_resume_from_a_saved_position_continues_exactly(dataset):
    loader = _loader(dataset, 1, 2)
    uninterrupted = [_keys(b) for b in loader.iter_steps(LoaderPosition(0, 0), 9)]
    first_part = list(_loader(dataset, 1, 2).iter_steps(LoaderPosition(0, 0), 9))[:7]
    saved = first_part[-1].position_after
    assert saved == LoaderPosition(epoch=1, sample_offset=16)
    resumed = list(_loader(dataset, 1, 2).iter_steps(LoaderPosition.from_json(saved.to_json()), 9))
    assert [_keys(b) for b in first_part] + [_keys(b) for b in resumed] == uninterrupted
    assert [b.step for b in resumed] == [8, 9]


def test_a_position_written_with_another_global_batch_is_refused(dataset):
    with pytest.raises(ValueError, match="another batch size"):
        _loader(dataset, 0, 2).completed_steps_at(LoaderPosition(0, 4))


def test_mixed_aspect_ratios_and_text_only_samples_collate(dataset):
    from eve_model.configuration_eve import EveConfig
    from eve_model.processing_eve import EveProcessor

    location, manifest = dataset
    step = _loader(dataset, 0, 1, global_batch=8, micro=8).step_batch(LoaderPosition(0, 0))
    samples = step.micro_batches[0].samples
    sizes = {(s.meta["width"], s.meta["height"]) for s in samples if s.image_bytes is not None}
    assert len(sizes) > 1
    processor = EveProcessor.from_eve_config(EveConfig.tiny(), max_length=128)
    for template in ("plain", "vicuna_v1"):
        batch = processor(processor_inputs(samples, template), template)
        assert batch["pixel_values"].shape[0] == 8 and batch["pixel_values"].shape[-1] == batch["pixel_values"].shape[-2]
        assert batch["has_image"].tolist() == [s.image_bytes is not None for s in samples]
        assert batch["input_ids"].shape == batch["labels"].shape
