"""Lineage is true for any source: a retrain's data chain from a folder and from s3://, node by node.

Each raw source is recorded by its own location and content hash (what the readers read, no path),
the ingested captions come from the caption source and the ingested conversations from the
conversation source, and each derived dataset names its real parents, down to the SFT mixture with
two. The same files in a folder and on S3 have one source hash."""

from __future__ import annotations

import hashlib
import uuid

import pytest

pytestmark = pytest.mark.slow


def _source_hash(spec) -> str:
    """The source's content hash computed independently of the ingest, from the readers' items."""
    from tasks.data.sharding import source_item_line

    digest = hashlib.sha256()
    for item in spec.read():
        digest.update(source_item_line(item))
    return digest.hexdigest()


def _chain(demo_dir, sources):
    from flows.retrain_flow import data_only, ingested_now
    from tasks.lineage.assemble import dataset_chain, raw_source_refs
    from tests.flows.test_retrain_e2e import _small_params

    params = _small_params(demo_dir, mode="skip", pretrain_steps=6)
    params = params.model_copy(update={"data": params.data.model_copy(update={
        "sources": sources.captions, "sft_sources": sources.sft})})
    prepared = data_only(params)
    raw = raw_source_refs(False, prepared.versions, ingested_now(params, prepared.data))
    return raw, {d.role: d for d in dataset_chain(raw, prepared.versions)}


def _check_chain(raw, datasets, sources) -> None:
    by_role = {ref.role: ref for ref in raw}
    assert set(by_role) == {"raw", "raw-sft"}
    assert by_role["raw"].location == f"{sources.captions[0].location} ({sources.captions[0].records_file})"
    assert by_role["raw-sft"].location == f"{sources.sft[0].location} ({sources.sft[0].records_file})"
    assert by_role["raw"].dataset_hash == _source_hash(sources.captions[0])
    assert by_role["raw-sft"].dataset_hash == _source_hash(sources.sft[0])
    expected_parents = {
        "ingested": [by_role["raw"].dataset_hash],
        "captioned": [datasets["ingested"].dataset_hash],
        "filtered": [datasets["captioned"].dataset_hash],
        "sft": [by_role["raw-sft"].dataset_hash],
        "sft-filtered": [datasets["sft"].dataset_hash],
        "sft-mixture": sorted([datasets["sft-filtered"].dataset_hash, datasets["filtered"].dataset_hash]),
    }
    assert set(datasets) == set(expected_parents)
    for role, parents in expected_parents.items():
        assert sorted(datasets[role].derived_from) == parents, role
    # The ingested shards are never their own source (a gate that keeps every row, by contrast, may
    # rightly give its input's hash: content addressing).
    for role in ("ingested", "sft"):
        assert datasets[role].dataset_hash not in datasets[role].derived_from, f"{role} derived from itself"


def test_the_chain_from_a_folder_and_from_s3_is_true_node_by_node(prefect_server, eve_home, tmp_path, s3_env):
    import s3fs

    from tasks.data.demo_source import DemoDataConfig, demo_sources, generate_demo_data
    from tasks.data.sources import SourceSpec

    demo_dir = generate_demo_data(tmp_path / "raw", DemoDataConfig.tiny())
    local = demo_sources(demo_dir)
    raw_local, chain_local = _chain(demo_dir, local)
    _check_chain(raw_local, chain_local, local)

    fs = s3fs.S3FileSystem(endpoint_url=s3_env.endpoint_url, skip_instance_cache=True)
    prefix = f"{s3_env.bucket}/lineage-{uuid.uuid4().hex[:8]}"
    fs.put(str(demo_dir), prefix, recursive=True)
    on_s3 = local.model_copy(update={
        "captions": [SourceSpec(**{**s.model_dump(), "location": s.location.replace(str(demo_dir), f"s3://{prefix}")})
                     for s in local.captions],
        "sft": [SourceSpec(**{**s.model_dump(), "location": s.location.replace(str(demo_dir), f"s3://{prefix}")})
                for s in local.sft],
    })
    assert all(s.location.startswith("s3://") for s in on_s3.captions + on_s3.sft)
    raw_s3, chain_s3 = _chain(demo_dir, on_s3)
    _check_chain(raw_s3, chain_s3, on_s3)
    # The same files elsewhere: the same source content, the same datasets.
    assert {r.role: r.dataset_hash for r in raw_s3} == {r.role: r.dataset_hash for r in raw_local}
    assert chain_s3["ingested"].dataset_hash == chain_local["ingested"].dataset_hash
