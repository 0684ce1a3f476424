"""caption_dataset with the source backend and a counting backend: output format, resume, cache."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from eve_model.shards import DatasetIntegrityError, ShardSample, ShardWriter, iter_samples, read_manifest
from tasks.caption.backends import CaptionBackend, CaptionBackendError, CaptionInput, CaptionOutput
from tasks.caption.config import CaptionConfig
from tasks.caption.provenance import BackendIdentity, get_prompt_template
from tasks.caption.run import caption_dataset


def png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def write_images(path: Path, count: int, per_shard: int = 4, captions: dict[int, str | None] | None = None) -> Path:
    with ShardWriter(path, max_items_per_shard=per_shard) as writer:
        for index in range(count):
            data = png((index * 7 % 256, index * 13 % 256, 90))
            caption = (captions or {}).get(index, f"source caption {index}")
            writer.write(ShardSample(f"img{index:04d}", {
                "caption": caption, "image_sha256": hashlib.sha256(data).hexdigest(), "width": 16, "height": 12,
            }, data, "png"))
    return path


class CountingTeacher(CaptionBackend):
    """A deterministic teacher (caption from the image hash) that counts calls and can fail on cue."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls: list[str] = []
        self.fail_on_call = fail_on_call
        template = get_prompt_template("brief-v1")
        self._identity = BackendIdentity(backend="hf", model_id="counting-teacher", weights_sha256="0" * 64,
                                         prompt_template=template.ref, prompt_text=template.text,
                                         decoding={"max_new_tokens": 8, "temperature": 0.0})

    @property
    def identity(self) -> BackendIdentity:
        return self._identity

    def caption_batch(self, inputs: list[CaptionInput]) -> list[CaptionOutput]:
        if self.fail_on_call is not None and len(self.calls) // 2 >= self.fail_on_call:
            raise CaptionBackendError("teacher went away")
        self.calls += [item.key for item in inputs]
        return [CaptionOutput(f"A picture numbered {item.image_sha256[:6]}.") for item in inputs]


def test_source_backend_normalises_and_records_provenance(tmp_path, eve_home) -> None:
    source = write_images(tmp_path / "in", 6, captions={0: "Cafe\u0301   by the\tsea ", 1: None, 2: "  "})
    result = caption_dataset(source, tmp_path / "out", CaptionConfig(backend="source"), progress=False)

    samples = {sample.key: sample for sample in iter_samples(tmp_path / "out")}
    inputs = {sample.key: sample for sample in iter_samples(source)}
    assert samples["img0000"].caption == "Caf\u00e9 by the sea"  # NFC + whitespace
    assert samples["img0000"].meta["source_caption"] == "Cafe\u0301   by the\tsea "
    assert samples["img0001"].caption is None and samples["img0002"].caption is None
    assert samples["img0001"].meta["caption_provenance"]["error"] == "sample has no source caption"
    assert samples["img0003"].meta["caption_provenance"]["backend"] == "source"
    assert all(samples[key].image_bytes == inputs[key].image_bytes for key in inputs)
    assert (result.num_samples, result.num_captioned, result.num_failed) == (6, 4, 2)
    assert read_manifest(tmp_path / "out").dataset_hash == result.output_dataset_hash

    again = caption_dataset(source, tmp_path / "out", CaptionConfig(backend="source"), progress=False)
    assert again.output_dataset_hash == result.output_dataset_hash and again.num_generated == 0
    with pytest.raises(DatasetIntegrityError, match="not caption run"):
        caption_dataset(source, tmp_path / "out", CaptionConfig(backend="source"),
                        backend=CountingTeacher(), progress=False)


def test_crash_resumes_without_redoing_committed_shards(tmp_path, eve_home) -> None:
    source = write_images(tmp_path / "in", 12, per_shard=4)  # 3 shards
    config = CaptionConfig(backend="hf", model="counting-teacher", batch_size=2, use_cache=False)

    crashing = CountingTeacher(fail_on_call=3)  # shard 0 (2 calls) done, dies in shard 1 after 1 call
    with pytest.raises(CaptionBackendError):
        caption_dataset(source, tmp_path / "out", config, backend=crashing, progress=False)
    assert crashing.calls == [f"img{i:04d}" for i in range(6)]
    assert not (tmp_path / "out" / "manifest.json").exists()

    teacher = CountingTeacher()
    result = caption_dataset(source, tmp_path / "out", config, backend=teacher, progress=False)
    # Shard 0 was committed and is not redone; shard 1 restarts (no cache in this run).
    assert teacher.calls == [f"img{i:04d}" for i in range(4, 12)]
    assert result.num_shards_resumed == 1 and result.num_generated == 8

    uninterrupted = caption_dataset(source, tmp_path / "clean", config, backend=CountingTeacher(), progress=False)
    assert uninterrupted.output_dataset_hash == result.output_dataset_hash


def test_cache_makes_a_rerun_free_and_keys_on_identity(tmp_path, eve_home) -> None:
    source = write_images(tmp_path / "in", 8)
    config = CaptionConfig(backend="hf", model="counting-teacher", batch_size=3)
    first = CountingTeacher()
    result = caption_dataset(source, tmp_path / "a", config, backend=first, progress=False)
    assert len(first.calls) == 8 and result.num_generated == 8

    second = CountingTeacher()
    rerun = caption_dataset(source, tmp_path / "b", config, backend=second, progress=False)
    assert second.calls == [] and rerun.num_from_cache == 8
    assert rerun.output_dataset_hash == result.output_dataset_hash  # provenance (with its time) is cached too

    changed = CountingTeacher()
    changed._identity = changed.identity.model_copy(update={"decoding": {"max_new_tokens": 9, "temperature": 0.0}})
    caption_dataset(source, tmp_path / "c", config, backend=changed, progress=False)
    assert len(changed.calls) == 8  # other decoding parameters: other cache entries

    sample = next(iter_samples(tmp_path / "b"))
    provenance = sample.meta["caption_provenance"]
    assert provenance["model_id"] == "counting-teacher" and provenance["prompt_template"] == "brief-v1"
    assert provenance["caption_run_id"] == result.run_id
    assert json.dumps(provenance)  # plain JSON in the shard


def test_the_same_input_and_teacher_give_the_same_version_in_any_home_and_history(tmp_path, monkeypatch) -> None:
    """The captioned version is content: another platform home, another day and a cache warmed by a
    different run give the same dataset hash (so every stage key after it reproduces); when the run
    happened is recorded beside the content, in the manifest's extra."""
    from datetime import datetime, timezone

    import tasks.caption.run as caption_run
    from eve_model.shards import read_manifest

    config = CaptionConfig(backend="hf", model="counting-teacher", batch_size=3)
    source = write_images(tmp_path / "in", 8)
    overlapping = write_images(tmp_path / "in-first", 6)  # the same first six images, another dataset

    monkeypatch.setenv("EVE_HOME", str(tmp_path / "home-a"))
    caption_dataset(overlapping, tmp_path / "home-a" / "first", config, backend=CountingTeacher(), progress=False)
    warm = caption_dataset(source, tmp_path / "home-a" / "out", config, backend=CountingTeacher(), progress=False)
    assert warm.num_from_cache == 6 and warm.num_generated == 2

    class _NextYear(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2031, 1, 1, tzinfo=timezone.utc)

    monkeypatch.setattr(caption_run, "datetime", _NextYear)
    monkeypatch.setenv("EVE_HOME", str(tmp_path / "home-b"))
    cold = caption_dataset(source, tmp_path / "home-b" / "out", config, backend=CountingTeacher(), progress=False)
    assert cold.num_generated == 8 and cold.run_id == warm.run_id
    assert cold.output_dataset_hash == warm.output_dataset_hash
    for location in (tmp_path / "home-a" / "out", tmp_path / "home-b" / "out"):
        assert {s.meta["caption_provenance"]["caption_run_id"] for s in iter_samples(location)} == {cold.run_id}
    recorded = [read_manifest(p).extra["caption_run"]["result"]["started_at"]
                for p in (tmp_path / "home-a" / "out", tmp_path / "home-b" / "out")]
    assert recorded[0] < recorded[1] == "2031-01-01T00:00:00+00:00"


def test_config_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown prompt_template"):
        CaptionConfig(prompt_template="nope-v9")
    with pytest.raises(ValueError, match="needs 'endpoint_url'"):
        CaptionConfig(backend="openai", model="m")
