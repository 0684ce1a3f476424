"""Curation keeps the requested count, drops planted near-duplicates and small images, counts reconcile."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from eve_model.shards import ShardSample, ShardWriter, iter_samples
from tasks.data.curate import CurationConfig, curate_dataset, thumbnail_embed
from tasks.data.demo_source import DemoDataConfig, render_scene, sample_scene


def _jpeg(png_bytes: bytes, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png_bytes)).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _write_planted(root: Path, num_scenes: int, make_duplicate, every: int = 5) -> tuple[dict[str, str], list[str]]:
    """Demo scenes, a near-duplicate of every ``every``-th one (after all originals), two images below the floor."""
    import random

    rng = random.Random(5)
    config = DemoDataConfig()
    duplicates_of: dict[str, str] = {}
    with ShardWriter(root, max_items_per_shard=10) as writer:
        scenes = []
        for index in range(num_scenes):
            scene = sample_scene(rng, config)
            png = render_scene(scene)
            scenes.append((f"scene-{index:03d}", png))
            writer.write(ShardSample(f"scene-{index:03d}", {"width": scene.width, "height": scene.height}, png, "png"))
        for copy_index, (key, png) in enumerate(scenes[::every]):
            duplicate, ext = make_duplicate(Image.open(io.BytesIO(png)).convert("RGB"))
            name = f"dup-{copy_index}-of-{key}"
            duplicates_of[name] = key
            width, height = Image.open(io.BytesIO(duplicate)).size
            writer.write(ShardSample(name, {"width": width, "height": height}, duplicate, ext))
        small = [f"small-{index}" for index in range(2)]
        for key, (_, png) in zip(small, scenes):
            writer.write(ShardSample(key, {"width": 24, "height": 24}, png, "png"))
    return duplicates_of, small


def _reencoded_jpeg(image: Image.Image) -> tuple[bytes, str]:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue(), "jpg"


def _resized_brighter_png(image: Image.Image) -> tuple[bytes, str]:
    buffer = io.BytesIO()
    image.resize((image.width - 2, image.height - 2)).point(lambda v: min(255, v + 4)).save(buffer, format="PNG")
    return buffer.getvalue(), "png"


@pytest.fixture(scope="module")
def planted_dataset(tmp_path_factory) -> tuple[Path, dict[str, str], list[str]]:
    """30 demo scenes + 6 re-encoded (JPEG q85) near-duplicates + 2 images below the resolution floor."""
    root = tmp_path_factory.mktemp("curate") / "input"
    duplicates_of, small = _write_planted(root, 30, _reencoded_jpeg)
    return root, duplicates_of, small


def _log(report) -> dict[str, dict]:
    return {r["key"]: r for r in map(json.loads, Path(report.curation_log_path).read_text().splitlines())}


def test_planted_duplicates_and_small_images_are_dropped_with_their_reason(planted_dataset, tmp_path: Path) -> None:
    root, duplicates_of, small = planted_dataset
    config = CurationConfig(num_clusters=4, keep_per_cluster=1000)
    report = curate_dataset(root, tmp_path / "out", config, embed_fn=thumbnail_embed)
    log = _log(report)
    assert report.reconciles and report.num_in == 38
    for duplicate, original in duplicates_of.items():
        assert log[duplicate]["reason"] == "near_duplicate"
        assert log[duplicate]["detail"].endswith(f"to {original}")  # the earlier copy is the one kept
        assert original not in log
    assert all(log[key]["reason"] == "resolution" for key in small)
    assert report.dropped_by_reason.get("cluster_overflow", 0) == 0  # cap above cluster sizes

    kept = [s.key for s in iter_samples(tmp_path / "out")]
    input_keys = [s.key for s in iter_samples(root)]
    assert kept == [key for key in input_keys if key not in log]  # input order, nothing invented


def test_keeps_exactly_the_requested_count_spread_over_clusters(planted_dataset, tmp_path: Path) -> None:
    root, _, _ = planted_dataset
    config = CurationConfig(num_clusters=5, keep_per_cluster=3, target_num_items=10)
    report = curate_dataset(root, tmp_path / "out", config, embed_fn=thumbnail_embed)
    assert report.num_kept == 10 and report.reconciles
    assert report.num_clusters_used == 5
    log = _log(report)
    assert Counter(r["reason"] for r in log.values())["cluster_overflow"] == report.dropped_by_reason["cluster_overflow"]

    capped = curate_dataset(root, tmp_path / "capped", config.model_copy(update={"target_num_items": None}), embed_fn=thumbnail_embed)
    # without a target each of the 5 clusters contributes at most 3
    assert capped.num_kept <= 15 and capped.num_kept >= report.num_kept
    assert capped.num_in - capped.num_kept == sum(capped.dropped_by_reason.values())


@pytest.mark.slow
def test_the_default_embedder_is_the_teacher(tmp_path: Path, eve_home: Path) -> None:
    duplicates_of, small = _write_planted(tmp_path / "input", 6, _resized_brighter_png, every=3)
    config = CurationConfig(num_clusters=3, keep_per_cluster=100)
    report = curate_dataset(tmp_path / "input", tmp_path / "out", config)
    assert report.embedder.startswith("teacher:"), report.embedder
    log = _log(report)
    assert {key for key, r in log.items() if r["reason"] == "near_duplicate"} == set(duplicates_of)
    assert report.num_kept == 6 and report.reconciles  # every distinct scene survives, cap is far above

    # The teacher's features of every embedded image are kept for the training stages, and a rerun
    # reads them back: the same decisions, nothing new written. Paper scale keeps nothing.
    cache = eve_home / "cache" / "teacher-features"
    entries = sorted(cache.rglob("*.safetensors"))
    embedded = report.num_in - sum(1 for r in log.values() if r["reason"] == "resolution")
    assert len(entries) == embedded > 0
    again = curate_dataset(tmp_path / "input", tmp_path / "again", config)
    assert _log(again) == log and sorted(cache.rglob("*.safetensors")) == entries
    assert CurationConfig.paper().cache_teacher_features is False
