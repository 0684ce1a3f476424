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
    # The demo's recipe: teacher-cosine near duplicates and teacher features cached for the stages.
    config = CurationConfig.demo().model_copy(update={"num_clusters": 3, "keep_per_cluster": 100})
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


# --- production defaults: calibrated near duplicates, curation that scales ----------------------

REAL_IMAGES = Path(__file__).parents[2] / "fixtures" / "real_data" / "images"


def _real_set_with_copies(root: Path) -> tuple[list[str], dict[str, str]]:
    """The fixture's real images (traffic lights, road signs, q/p/d/b glyphs) and planted near copies
    of three of them: JPEG q75 on white, 80 % size, and the same file twice."""
    from tasks.data.image_near_duplicates import flatten_on_white

    originals = sorted(REAL_IMAGES.glob("*.png"))
    copies: dict[str, str] = {}
    with ShardWriter(root, max_items_per_shard=8) as writer:
        for path in originals:
            image = Image.open(path)
            writer.write(ShardSample(path.stem, {"width": image.width, "height": image.height}, path.read_bytes(), "png"))
        for name, make in (("jpeg", "openclipart-traffic-light-red"), ("small", "dejavu-sans-q"),
                           ("again", "openclipart-crossroads")):
            source = Image.open(REAL_IMAGES / f"{make}.png")
            buffer = io.BytesIO()
            if name == "jpeg":
                flatten_on_white(source).save(buffer, format="JPEG", quality=75)
            elif name == "small":
                source.resize((77, 77)).save(buffer, format="PNG")
            else:
                buffer.write((REAL_IMAGES / f"{make}.png").read_bytes())
            copy = Image.open(io.BytesIO(buffer.getvalue()))
            copies[f"{name}-copy-of-{make}"] = make
            writer.write(ShardSample(f"{name}-copy-of-{make}", {"width": copy.width, "height": copy.height},
                                     buffer.getvalue(), "jpg" if name == "jpeg" else "png"))
    return [path.stem for path in originals], copies


def test_near_duplicates_by_default_drop_copies_and_keep_look_alike_real_images(tmp_path: Path) -> None:
    """q/p, d/b, red/yellow/green lights and the junction signs are different images and all stay."""
    originals, copies = _real_set_with_copies(tmp_path / "input")
    report = curate_dataset(tmp_path / "input", tmp_path / "out", CurationConfig(), embed_fn=thumbnail_embed)
    log = _log(report)
    assert {key: entry["reason"] for key, entry in log.items()} == {copy: "near_duplicate" for copy in copies}
    for copy, original in copies.items():
        assert log[copy]["detail"].endswith(f"to {original}")
    assert [s.key for s in iter_samples(tmp_path / "out")] == originals
    assert report.rules_in_force[1].startswith("near duplicates: perceptual hash")
    # Every image kept: no k-means, so the (slow) embedding is never computed.
    assert report.embedder.startswith("none") and "every image kept, no k-means" in report.rules_in_force[2]


def test_cluster_plan_scales_with_the_data_in_the_papers_shape() -> None:
    from tasks.data.curate import plan_clusters

    paper = plan_clusters(400_000_000, CurationConfig.paper())
    assert (paper.num_clusters, paper.keep_per_cluster, paper.target_num_items) == (50_000, 300, 15_000_000)
    scaled = plan_clusters(100_000, CurationConfig(target_num_items=10_000))
    assert (scaled.num_clusters, scaled.keep_per_cluster) == (1_250, 8)
    assert scaled.num_clusters * scaled.keep_per_cluster >= scaled.target_num_items
    fraction = plan_clusters(1_000, CurationConfig(target_fraction=0.5))
    assert fraction.target_num_items == 500 and fraction.num_clusters * fraction.keep_per_cluster >= 500
    # Own data: every image that passes the filters is kept, whatever the size (no 500-image cap).
    for size in (10, 600, 50_000):
        everything = plan_clusters(size, CurationConfig())
        assert (everything.target_num_items, everything.num_clusters) == (size, 0) and "every image kept" in everything.rule
    demo = plan_clusters(600, CurationConfig.demo())
    assert (demo.num_clusters, demo.keep_per_cluster) == (50, 10)


def test_report_states_the_rules_and_keeps_the_target(planted_dataset, tmp_path: Path) -> None:
    root, _, _ = planted_dataset
    report = curate_dataset(root, tmp_path / "out", CurationConfig(target_num_items=12), embed_fn=thumbnail_embed)
    assert report.num_kept == 12 and report.reconciles
    plan = report.cluster_plan
    assert plan.target_num_items == 12 and plan.num_clusters == report.num_clusters_used > 0
    rules = "\n".join(report.rules_in_force)
    assert "at least 32x32 px" in rules and "perceptual hash" in rules and f"{plan.num_clusters} clusters" in rules
    assert "## Rules in force" in report.summary_markdown()
    assert any(str(row["outcome"]).startswith("rule: ") for row in report.table_rows())


def test_production_defaults_and_the_demo_recipe() -> None:
    production, demo = CurationConfig(), CurationConfig.demo()
    assert (production.min_width_pixels, production.cache_teacher_features, production.near_duplicate_method,
            production.num_clusters, production.target_fraction) == (32, False, "perceptual-hash", None, 1.0)
    assert (demo.min_width_pixels, demo.near_duplicate_method, demo.near_duplicate_cosine, demo.num_clusters,
            demo.keep_per_cluster, demo.cache_teacher_features) == (64, "embedding", 0.95, 50, 10, True)
