"""Readers + validation + sharding on deliberately broken inputs: one right reason each, counts reconcile."""

from __future__ import annotations

import io
import itertools
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from eve_model.shards import iter_samples, verify_dataset
from tasks.data.demo_source import DemoDataConfig, generate_demo_data
from tasks.data.sharding import ingest_items
from tasks.data.sources import read_image_folder, read_parquet, read_webdataset
from tasks.data.validate import Quarantined, ValidationConfig, validate_item

ACCEPTED = "accepted"


def _outcome(item, config) -> str:
    result = validate_item(item, config)
    return result.reason.value if isinstance(result, Quarantined) else ACCEPTED


def test_every_planted_defect_in_a_folder_gets_its_reason(broken_corpus) -> None:
    items = list(read_image_folder(str(broken_corpus.folder), records_file="captions.csv"))
    got = {item.item_id: _outcome(item, broken_corpus.config) for item in items}
    assert got == broken_corpus.expected_folder
    escaped = [i for i in items if i.item_id.startswith("escape-")]
    assert all(i.image_bytes is None for i in escaped)  # the file outside the folder was never read


def test_hostile_tar_members_are_quarantined_not_extracted(broken_corpus, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # an extracting reader would write ../evil.png next to this folder
    items = list(read_webdataset(str(broken_corpus.tar_path)))
    got = [(item.item_id, _outcome(item, broken_corpus.config)) for item in items]
    assert got == broken_corpus.expected_tar
    assert not (tmp_path.parent / "evil.png").exists() and not Path("/abs/evil2.png").exists()
    ok3 = next(i for i in items if i.item_id == "ok-3")
    assert ok3.caption == "from json" and ok3.extra["source_url"] == "http://x"


def test_parquet_rows(broken_corpus) -> None:
    got = {i.item_id: _outcome(i, broken_corpus.config) for i in read_parquet(str(broken_corpus.parquet_path))}
    assert got == broken_corpus.expected_parquet


def test_ingest_counts_reconcile_and_shards_hold_exactly_the_accepted(broken_corpus, tmp_path: Path) -> None:
    items = itertools.chain(
        read_image_folder(str(broken_corpus.folder), records_file="captions.csv"),
        read_webdataset(str(broken_corpus.tar_path)),
        read_parquet(str(broken_corpus.parquet_path)),
    )
    expected = Counter(broken_corpus.expected_folder.values())
    expected += Counter(outcome for _, outcome in broken_corpus.expected_tar)
    expected += Counter(broken_corpus.expected_parquet.values())
    progress_calls = []
    report = ingest_items(
        items, tmp_path / "ds", broken_corpus.config, max_items_per_shard=3,
        progress=lambda *counts: progress_calls.append(counts), progress_every_items=5,
    )
    assert report.reconciles
    assert report.num_in == sum(expected.values())
    assert report.num_accepted == expected[ACCEPTED]
    assert report.quarantined_by_reason == {k: v for k, v in expected.items() if k != ACCEPTED}
    assert report.num_converted_to_rgb == 3  # CMYK, 16-bit, LA; nothing else was re-encoded
    assert progress_calls[-1] == (report.num_in, report.num_accepted, report.num_quarantined)

    quarantine = [json.loads(line) for line in Path(report.quarantine_path).read_text().splitlines()]
    assert len(quarantine) == report.num_quarantined
    assert all(record["detail"] and record["source_uri"] for record in quarantine)

    manifest = verify_dataset(tmp_path / "ds", expected_hash=report.dataset_hash)
    samples = list(iter_samples(tmp_path / "ds"))
    assert len(samples) == manifest.num_items == report.num_accepted
    assert len({s.key for s in samples}) == len(samples)
    for sample in samples:
        image = Image.open(io.BytesIO(sample.image_bytes))
        image.load()
        assert image.mode == "RGB" and image.size == (sample.meta["width"], sample.meta["height"])
        assert sample.meta["caption"].strip() == sample.meta["caption"] != ""


def test_the_demo_source_ingests_with_only_its_planted_failures(tmp_path: Path) -> None:
    demo = generate_demo_data(tmp_path / "raw", DemoDataConfig.tiny())
    report = ingest_items(read_image_folder(str(demo / "train")), tmp_path / "ds", ValidationConfig.demo())
    assert report.num_accepted == DemoDataConfig.tiny().num_caption_scenes
    assert report.quarantined_by_reason == {
        "bad_aspect_ratio": 1, "caption_empty": 1, "too_small": 1, "truncated_image": 1, "zero_bytes": 1,
    }
    sample = next(iter_samples(tmp_path / "ds"))
    assert sample.meta["true_caption"] and sample.meta["scene"]["shapes"]

    qa = ingest_items(
        read_image_folder(str(demo / "train"), records_file="conversations.jsonl"),
        tmp_path / "qa", ValidationConfig.demo().model_copy(update={"require_caption": False}),
    )
    assert qa.num_quarantined == 0
    assert next(iter_samples(tmp_path / "qa")).meta["conversations"][0]["value"].startswith("<image>\n")


def test_paper_resolution_rule_rejects_small_images(broken_corpus, tmp_path: Path) -> None:
    items = list(read_image_folder(str(broken_corpus.folder), records_file="captions.csv"))
    good = next(i for i in items if i.item_id == "good-jpeg")
    result = validate_item(good, ValidationConfig.paper())
    assert isinstance(result, Quarantined) and result.reason.value == "too_small" and "449" in result.detail


@pytest.mark.slow
def test_readers_work_on_s3_with_the_same_outcomes(broken_corpus, s3_env) -> None:
    import uuid

    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_env.endpoint_url, skip_instance_cache=True)
    prefix = f"{s3_env.bucket}/raw-{uuid.uuid4().hex[:8]}"
    fs.put(str(broken_corpus.folder), f"{prefix}/folder", recursive=True)
    fs.put(str(broken_corpus.tar_path), f"{prefix}/tars/{broken_corpus.tar_path.name}")
    fs.put(str(broken_corpus.parquet_path), f"{prefix}/pairs.parquet")

    folder_items = list(read_image_folder(f"s3://{prefix}/folder", records_file="captions.csv"))
    assert {i.item_id: _outcome(i, broken_corpus.config) for i in folder_items} == broken_corpus.expected_folder
    assert all(i.source_uri.startswith(f"s3://{prefix}/folder") for i in folder_items if i.image_bytes)
    tar_items = list(read_webdataset(f"s3://{prefix}/tars"))
    assert [(i.item_id, _outcome(i, broken_corpus.config)) for i in tar_items] == broken_corpus.expected_tar
    parquet_items = list(read_parquet(f"s3://{prefix}/pairs.parquet"))
    assert {i.item_id: _outcome(i, broken_corpus.config) for i in parquet_items} == broken_corpus.expected_parquet


def test_the_dataset_hash_does_not_depend_on_where_the_source_lives(tmp_path: Path) -> None:
    import shutil

    demo = generate_demo_data(tmp_path / "here", DemoDataConfig.tiny())
    shutil.copytree(demo, tmp_path / "elsewhere" / "moved")
    first = ingest_items(read_image_folder(str(demo / "train")), tmp_path / "a", ValidationConfig.demo())
    second = ingest_items(read_image_folder(str(tmp_path / "elsewhere" / "moved" / "train")), tmp_path / "b", ValidationConfig.demo())
    assert first.dataset_hash == second.dataset_hash
    sample = next(iter_samples(tmp_path / "a"))
    assert sample.meta["source"]["uri"].startswith("images/") and str(tmp_path) not in sample.meta["source"]["uri"]


def test_corrupt_and_truncated_archives_are_quarantined_not_fatal(broken_corpus, tmp_path: Path) -> None:
    import random

    tars = tmp_path / "tars"
    tars.mkdir()
    whole = broken_corpus.tar_path.read_bytes()
    (tars / "a-garbage.tar").write_bytes(random.Random(1).randbytes(4096))
    (tars / "b-truncated.tar").write_bytes(whole[:1500])  # cut inside the second member's data
    (tars / "c-good.tar").write_bytes(whole)
    (tmp_path / "not.parquet").write_bytes(b"PAR1 this is not parquet")

    items = list(read_webdataset(str(tars))) + list(read_parquet(str(tmp_path / "not.parquet")))
    outcomes = [(i.source_uri.split(str(tmp_path))[-1].split("/", 2)[-1], _outcome(i, broken_corpus.config)) for i in items]
    assert outcomes[0] == ("a-garbage.tar#after-item-0", "unreadable_source")
    truncated = [o for o in outcomes if o[0].startswith("b-truncated.tar")]
    assert truncated[-1][1] == "unreadable_source" and len(truncated) <= 2
    good = [o[1] for o in outcomes if o[0].startswith("c-good.tar")]
    assert good == [outcome for _, outcome in broken_corpus.expected_tar]  # the next archive is read in full
    assert outcomes[-1] == ("not.parquet#after-item-0", "unreadable_source")
