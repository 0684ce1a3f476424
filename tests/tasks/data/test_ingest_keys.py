"""Ingest with long item ids: a shard member name is limited (ustar: 100 characters), so keys are cut to
``MAX_KEY_CHARS`` and collisions made by the cut are told apart; an item id of 96 or more characters
used to stop the whole ingest when its shard was written."""

from __future__ import annotations

import tarfile

from eve_model.shards import MAX_KEY_CHARS, read_manifest, verify_dataset
from tasks.data.sharding import ingest_items
from tasks.data.sources import RawItem
from tasks.data.validate import ValidationConfig
from tests.tasks.data.hostile_corpus import plain_png


def test_long_item_ids_are_ingested_with_distinct_keys_that_fit_a_shard(tmp_path) -> None:
    shared_prefix = "photo_" + "x" * 120
    ids = [
        shared_prefix + "-one",  # these two agree on far more than MAX_KEY_CHARS characters
        shared_prefix + "-two",
        shared_prefix + "-two",  # the same id twice (two sources)
        "k" * (MAX_KEY_CHARS - 2),  # just fits, and is repeated: its disambiguated variant must fit too
        "k" * (MAX_KEY_CHARS - 2),
        "short-id",
    ]
    items = [RawItem(item_id, f"test#{index}", plain_png(), "x.png", f"caption {index}") for index, item_id in enumerate(ids)]
    report = ingest_items(items, tmp_path / "out", ValidationConfig())
    assert report.num_accepted == len(ids) and report.reconciles

    verify_dataset(tmp_path / "out")
    names = []
    for shard in read_manifest(tmp_path / "out").shards:
        with tarfile.open(tmp_path / "out" / shard.name) as tar:
            names += tar.getnames()
    keys = {name.rsplit(".", 1)[0] for name in names}
    assert len(keys) == len(ids)
    assert max(len(name) for name in names) <= 100
    assert max(len(key) for key in keys) <= MAX_KEY_CHARS
    assert "short-id" in keys  # a short id keeps its key
