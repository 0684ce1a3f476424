"""Sample order: deterministic from (seed, epoch), sharded over ranks without overlap, exact resume."""

from __future__ import annotations

import json

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


# ---- reading only this rank's samples --------------------------------------------------------


def test_each_rank_reads_about_its_share_and_the_same_samples_as_whole_shard_reads(dataset, tmp_path):
    """Per-sample ranged reads give exactly the samples a whole-shard read gives, and over an
    epoch each of 2 ranks reads about half of the shard bytes (headers included), not all of them."""
    from eve_model.shards import iter_samples

    location, manifest = dataset
    whole = {sample.key: sample for sample in iter_samples(location, manifest=manifest)}
    dataset_bytes = sum(shard.num_bytes for shard in manifest.shards)
    steps = 44 // 8
    reads = []
    for rank in (0, 1):
        loader = _loader(dataset, rank, 2)
        for batch in loader.iter_steps(LoaderPosition(0, 0), steps):
            for micro in batch.micro_batches:
                for sample in micro.samples:
                    assert sample.meta == whole[sample.key].meta and sample.image_bytes == whole[sample.key].image_bytes
        reads.append(loader.reader.bytes_read / dataset_bytes)
    # 40 of 44 samples are consumed, half per rank; tar headers (~1 KB per sample) on top.
    assert all(0.4 < share < 0.65 for share in reads), reads


def test_an_image_that_does_not_match_its_hash_is_refused(tmp_path):
    import hashlib

    from eve_model.shards import DatasetIntegrityError, ShardSample, ShardWriter

    with ShardWriter(tmp_path / "ds", max_items_per_shard=4) as writer:
        for index in range(4):
            image = bytes([index]) * 64
            claimed = hashlib.sha256(b"other" if index == 2 else image).hexdigest()
            writer.write(ShardSample(key=f"k{index}", meta={"caption": "x", "image_sha256": claimed}, image_bytes=image, image_ext="png"))
    manifest = read_manifest(tmp_path / "ds")
    loader = ResumableShardLoader(str(tmp_path / "ds"), manifest, seed=0, shuffle_block_shards=1, global_batch_size_samples=4,
                                  micro_batch_size_samples=4, rank=0, world_size=1)
    with pytest.raises(DatasetIntegrityError, match="k2 does not match its image_sha256"):
        loader.step_batch(LoaderPosition(0, 0))


def test_the_shared_index_cache_gives_the_same_samples_with_fewer_bytes(dataset, tmp_path):
    cache = str(tmp_path / "index")
    first = ResumableShardLoader(dataset[0], dataset[1], seed=3, shuffle_block_shards=2, global_batch_size_samples=8,
                                 micro_batch_size_samples=2, rank=0, world_size=2, index_cache_dir=cache)
    second = ResumableShardLoader(dataset[0], dataset[1], seed=3, shuffle_block_shards=2, global_batch_size_samples=8,
                                  micro_batch_size_samples=2, rank=0, world_size=2, index_cache_dir=cache)
    keys = [[_keys(b) for b in loader.iter_steps(LoaderPosition(0, 0), 5)] for loader in (first, second)]
    assert keys[0] == keys[1] and second.reader.bytes_read < first.reader.bytes_read


def test_loader_workers_deliver_exactly_what_the_training_thread_would(dataset):
    from eve_model.training.data import prepared_steps

    def collate(samples):
        import torch

        return {"ids": torch.tensor([int(s.key[1:]) for s in samples])}

    inline = list(prepared_steps(_loader(dataset, 1, 2), collate, 3, 9, workers=0))
    workers = list(prepared_steps(_loader(dataset, 1, 2), collate, 3, 9, workers=2, prefetch_steps=2))
    assert [p.step for p in workers] == [4, 5, 6, 7, 8, 9]
    for a, b in zip(inline, workers, strict=True):
        assert a.position_after == b.position_after and [m.keys for m in a.micro_batches] == [m.keys for m in b.micro_batches]
        assert all((x.batch["ids"] == y.batch["ids"]).all() for x, y in zip(a.micro_batches, b.micro_batches))


def test_loader_workers_ignore_the_stop_signals():
    import multiprocessing
    import signal

    from eve_model.training.data import ignore_stop_signals

    def child(queue):
        ignore_stop_signals()
        queue.put([signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)])

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=child, args=(queue,))
    process.start()
    assert queue.get(timeout=30) == [signal.SIG_IGN] * 3
    process.join(30)


# ---- group_by_modality_length (SFT) -----------------------------------------------------------


@pytest.fixture(scope="module")
def sft_dataset(tmp_path_factory):
    location = tmp_path_factory.mktemp("sft") / "ds"
    write_tiny_dataset(location, num_samples=96, items_per_shard=16, text_only_every=3)  # a third text-only
    return str(location), read_manifest(location)


def _grouped(dataset, rank, world_size, seed=5):
    location, manifest = dataset
    return ResumableShardLoader(location, manifest, seed=seed, shuffle_block_shards=3, global_batch_size_samples=8,
                                micro_batch_size_samples=2, rank=rank, world_size=world_size, group_by_modality_length=True)


def test_grouped_batches_hold_one_modality_sorted_by_length(sft_dataset):
    loader = _grouped(sft_dataset, 0, 1)
    steps = list(loader.iter_steps(LoaderPosition(0, 0), 96 // 8))
    kinds = []
    for step in steps:
        samples = [s for micro in step.micro_batches for s in micro.samples]
        with_image = {s.image_bytes is not None for s in samples}
        kinds.append(with_image)
        if len(with_image) == 1:
            # The length proxy: the size of the sample's metadata JSON as stored in the shard.
            lengths = [len(json.dumps(s.meta, sort_keys=True, ensure_ascii=False).encode()) for s in samples]
            assert lengths == sorted(lengths, reverse=True)
    # Only batches made of a block's leftovers may mix; most are single-modality, both kinds occur.
    single = [k for k in kinds if len(k) == 1]
    assert len(single) >= len(kinds) - 2 and {True} in single and {False} in single
    # Every sample of the epoch exactly once, and the grouped order differs from the plain one.
    keys = [k for step in steps for k in _keys(step)]
    assert len(keys) == len(set(keys)) == 96
    plain = ResumableShardLoader(sft_dataset[0], sft_dataset[1], seed=5, shuffle_block_shards=3, global_batch_size_samples=8,
                                 micro_batch_size_samples=2, rank=0, world_size=1)
    assert keys != [k for step in plain.iter_steps(LoaderPosition(0, 0), 12) for k in _keys(step)]


def test_grouped_order_resumes_exactly_and_does_not_depend_on_the_world_size(sft_dataset):
    uninterrupted = [_keys(b) for b in _grouped(sft_dataset, 1, 2).iter_steps(LoaderPosition(0, 0), 20)]
    first = list(_grouped(sft_dataset, 1, 2).iter_steps(LoaderPosition(0, 0), 20))[:13]
    resumed = list(_grouped(sft_dataset, 1, 2).iter_steps(first[-1].position_after, 20))
    assert [_keys(b) for b in first] + [_keys(b) for b in resumed] == uninterrupted
    single = [_keys(b) for b in _grouped(sft_dataset, 0, 1).iter_steps(LoaderPosition(0, 0), 20)]
    two = [_keys(a) + _keys(b) for a, b in zip(_grouped(sft_dataset, 0, 2).iter_steps(LoaderPosition(0, 0), 20),
                                               _grouped(sft_dataset, 1, 2).iter_steps(LoaderPosition(0, 0), 20))]
    assert single == two


def test_forked_workers_open_their_own_shard_files(dataset):
    """A worker forked after the parent read from a shard must not share the parent's file offset."""
    from eve_model.training.data import prepared_steps

    loader = _loader(dataset, 0, 2)
    loader.step_batch(LoaderPosition(0, 0))  # the parent now holds open shard files
    parent_handles = dict(loader.reader._handles)
    inline = [[m.keys for m in p.micro_batches] for p in prepared_steps(_loader(dataset, 0, 2), lambda s: {}, 0, 5)]
    forked = [[m.keys for m in p.micro_batches] for p in prepared_steps(loader, lambda s: {}, 0, 5, workers=2)]
    assert forked == inline
    assert all(not handle.closed for handle in parent_handles.values())
