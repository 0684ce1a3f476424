"""The shard format: deterministic hashes, integrity checks, interrupted writes."""

from __future__ import annotations

import json
import tarfile

import pytest

from eve_model.shards import (
    DatasetIntegrityError,
    ShardSample,
    ShardWriter,
    iter_samples,
    read_manifest,
    verify_dataset,
)


def _samples(n: int) -> list[ShardSample]:
    out = []
    for i in range(n):
        image = (f"png-bytes-{i}".encode(), "png") if i % 3 else (None, None)
        out.append(ShardSample(key=f"s{i:04d}", meta={"caption": f"caption {i}"}, image_bytes=image[0], image_ext=image[1]))
    return out


def _write(path, samples, per_shard=4):
    with ShardWriter(path, max_items_per_shard=per_shard) as writer:
        writer.write_all(samples)
    return writer.manifest


def test_round_trip_keeps_order_images_and_counts(tmp_path):
    samples = _samples(10)
    manifest = _write(tmp_path / "ds", samples)
    assert [s.num_items for s in manifest.shards] == [4, 4, 2]
    read = list(iter_samples(tmp_path / "ds"))
    assert [s.key for s in read] == [s.key for s in samples]
    assert [s.image_bytes for s in read] == [s.image_bytes for s in samples]
    assert read[1].caption == "caption 1"
    assert verify_dataset(tmp_path / "ds", manifest.dataset_hash).num_items == 10


def test_same_samples_give_same_hash_and_different_samples_do_not(tmp_path):
    a = _write(tmp_path / "a", _samples(7))
    b = _write(tmp_path / "b", _samples(7))
    changed = _samples(7)
    changed[5].meta["caption"] = "edited"
    c = _write(tmp_path / "c", changed)
    assert a.dataset_hash == b.dataset_hash
    assert a.dataset_hash != c.dataset_hash


def test_expected_hash_mismatch_and_corrupt_shard_are_reported(tmp_path):
    manifest = _write(tmp_path / "ds", _samples(5))
    with pytest.raises(DatasetIntegrityError, match="was expected"):
        verify_dataset(tmp_path / "ds", "0" * 64)
    shard = tmp_path / "ds" / manifest.shards[0].name
    shard.write_bytes(shard.read_bytes()[:-10] + b"x" * 10)
    with pytest.raises(DatasetIntegrityError, match="does not match"):
        verify_dataset(tmp_path / "ds")


def test_edited_manifest_is_rejected(tmp_path):
    _write(tmp_path / "ds", _samples(5))
    path = tmp_path / "ds" / "manifest.json"
    payload = json.loads(path.read_text())
    payload["shards"][0]["num_items"] = 99
    path.write_text(json.dumps(payload))
    with pytest.raises(DatasetIntegrityError, match="does not match its shard list"):
        read_manifest(tmp_path / "ds")


def test_interrupted_write_leaves_no_dataset(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "ds", max_items_per_shard=2) as writer:
            writer.write_all(_samples(5))
            raise RuntimeError("killed mid-write")
    with pytest.raises(DatasetIntegrityError, match="manifest.json is missing"):
        read_manifest(tmp_path / "ds")


def test_bad_keys_and_duplicates_are_refused(tmp_path):
    writer = ShardWriter(tmp_path / "ds")
    with pytest.raises(ValueError, match="must match"):
        writer.write(ShardSample(key="../escape", meta={}))
    writer.write(ShardSample(key="a", meta={}))
    with pytest.raises(ValueError, match="duplicate"):
        writer.write(ShardSample(key="a", meta={}))


def test_reader_refuses_member_names_that_leave_the_folder(tmp_path):
    manifest = _write(tmp_path / "ds", _samples(2))
    shard_path = tmp_path / "ds" / manifest.shards[0].name
    with tarfile.open(shard_path, "w") as tar:
        info = tarfile.TarInfo("../evil.json")
        info.size = 2
        import io

        tar.addfile(info, io.BytesIO(b"{}"))
    from eve_model.shards import read_shard

    with pytest.raises(DatasetIntegrityError, match="invalid member name"):
        read_shard(tmp_path / "ds", manifest.shards[0], verify=False)
