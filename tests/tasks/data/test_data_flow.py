"""The data flow end to end on a real Prefect server: versions registered, counts published, reruns cached."""

from __future__ import annotations

import shutil

import pytest

from tasks.data.curate import CurationConfig
from tasks.data.demo_source import DemoDataConfig, demo_sources, generate_demo_data
from tasks.data.validate import ValidationConfig
from tasks.data.versioning import DatasetRegistry


@pytest.mark.slow
def test_data_flow_registers_versions_and_caches_reruns(prefect_server, eve_home, tmp_path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.data_flow import DataFlowParams, data_pipeline

    sources = demo_sources(generate_demo_data(tmp_path / "raw", DemoDataConfig.tiny()))
    params = DataFlowParams(
        dataset_name="flowtest", sources=sources.captions, sft_sources=sources.sft,
        validation=ValidationConfig.demo(),  # the demo source's broken items are broken under its own rules
        curation=CurationConfig(embedder="thumbnail", num_clusters=4, keep_per_cluster=4), max_items_per_shard=10,
    )
    state = data_pipeline(params, return_state=True)
    result = state.result()
    tiny = DemoDataConfig.tiny()
    assert result.ingest.num_in == tiny.num_caption_scenes + 5 and result.ingest.num_quarantined == 5
    assert result.curation.num_in == result.ingest.num_accepted and result.curation.reconciles
    assert result.curation.num_kept <= 16  # 4 clusters x 4
    assert result.caption_version.dataset_hash == result.curation.dataset_hash
    assert result.sft_version.num_items == tiny.num_qa_train_conversations
    registry = DatasetRegistry.from_settings()
    assert {v.name for v in registry.list_versions()} == {"flowtest-raw", "flowtest-curated", "flowtest-sft"}

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    wanted = ["ingest-counts-flowtest-raw", "ingest-counts-flowtest-sft", "curation-counts"]
    with get_client(sync_client=True) as client:
        # By key: the session's server holds every earlier test's artifacts, beyond one unfiltered page.
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=wanted)))
        keys = {a.key for a in artifacts}
        assert {"ingest-counts-flowtest-raw", "ingest-counts-flowtest-sft", "curation-counts"} <= keys
        ingest_table = next(a for a in artifacts if a.key == "ingest-counts-flowtest-raw")
        assert '"quarantined: zero_bytes"' in str(ingest_table.data)

    shutil.rmtree(eve_home / "staging")  # staging is disposable once versions are registered
    again = data_pipeline(params, return_state=True)
    assert again.result().caption_version == result.caption_version
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[again.state_details.flow_run_id])))
    states = {run.name.rsplit("-", 1)[0]: run.state.name for run in runs}
    assert states["ingest-sources"] == "Cached" and states["curate-dataset"] == "Cached", states
    assert len(registry.list_versions()) == 3

    # a new curation config after staging is gone: the raw input comes back from the registry by hash
    recurated = data_pipeline(params.model_copy(update={"curation": params.curation.model_copy(update={"keep_per_cluster": 2})}))
    assert recurated.curation.input_dataset_hash == result.ingest.dataset_hash
    assert recurated.curation.num_kept <= 8 and recurated.caption_version.dataset_hash != result.caption_version.dataset_hash
    assert len(registry.list_versions("flowtest-curated")) == 2
