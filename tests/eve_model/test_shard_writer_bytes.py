"""ShardWriter writes its tar headers itself (issue 19: ingest close to the cost of decoding); the shards
must stay byte for byte what Python's ``tarfile`` writes, or every dataset hash would change."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile

import pytest

from eve_model.shards import MAX_KEY_CHARS, ShardSample, ShardWriter, iter_samples, read_manifest


def _tarfile_shard(samples: list[ShardSample]) -> bytes:
    """The reference: the shard as ``tarfile`` (ustar) writes it, with the writer's fixed member fields."""

    def info(name: str, size: int) -> tarfile.TarInfo:
        member = tarfile.TarInfo(name)
        member.size, member.mtime, member.uid, member.gid, member.uname, member.gname, member.mode = size, 0, 0, 0, "", "", 0o644
        return member

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            payload = json.dumps({**sample.meta, "key": sample.key}, sort_keys=True, ensure_ascii=False).encode("utf-8")
            tar.addfile(info(f"{sample.key}.json", len(payload)), io.BytesIO(payload))
            if sample.image_bytes is not None:
                tar.addfile(info(f"{sample.key}.{sample.image_ext}", len(sample.image_bytes)), io.BytesIO(sample.image_bytes))
    return buffer.getvalue()


def _samples(count: int, seed: int) -> list[ShardSample]:
    rng = random.Random(seed)
    sizes = [0, 1, 511, 512, 513, 10240, 10239]  # block and record edges first, then random sizes
    samples = []
    for index in range(count):
        size = sizes[index] if index < len(sizes) else rng.randrange(0, 40_000)
        key = "k" * MAX_KEY_CHARS if index == 3 else f"item-{index:05d}_{rng.randrange(10**6)}"
        with_image = index % 5 != 4
        samples.append(ShardSample(
            key=key,
            meta={"caption": f"ein Bild Nr. {index} \u2013 \u56fe\u7247", "width": size % 300, "n": [index, None]},
            image_bytes=rng.randbytes(size) if with_image else None,
            image_ext=("jpg", "png", "webp")[index % 3] if with_image else None,
        ))
    return samples


@pytest.mark.parametrize("items_per_shard", [1, 7, 1000])
def test_shards_are_byte_identical_to_tarfile_and_read_back(tmp_path, items_per_shard) -> None:
    samples = _samples(40, seed=items_per_shard)
    with ShardWriter(tmp_path / "out", max_items_per_shard=items_per_shard) as writer:
        writer.write_all(samples)
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest.shards) == -(-len(samples) // items_per_shard)
    for index, shard in enumerate(manifest.shards):
        data = (tmp_path / "out" / shard.name).read_bytes()
        chunk = samples[index * items_per_shard : (index + 1) * items_per_shard]
        assert data == _tarfile_shard(chunk)
        assert (shard.sha256, shard.num_bytes, shard.num_items) == (hashlib.sha256(data).hexdigest(), len(data), len(chunk))
    read = list(iter_samples(tmp_path / "out"))
    assert [(s.key, s.image_bytes, s.image_ext, s.caption) for s in read] == \
        [(s.key, s.image_bytes, s.image_ext, s.caption) for s in samples]
    assert not list((tmp_path / "out" / "shards").glob("*.partial"))


def test_a_key_too_long_for_a_member_name_is_refused_when_written(tmp_path) -> None:
    writer = ShardWriter(tmp_path / "out")
    with pytest.raises(ValueError, match=f"at most {MAX_KEY_CHARS} characters"):
        writer.write(ShardSample(key="k" * (MAX_KEY_CHARS + 1), meta={}, image_bytes=b"x", image_ext="png"))
