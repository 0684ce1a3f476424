"""The quality @task wrappers against a real Prefect server: artifacts published, rejected version stops the flow."""

from __future__ import annotations

import pytest

from tests.tasks.quality.test_gate import clean_captions, planted_dataset, write_dataset

pytestmark = pytest.mark.slow


def test_gate_task_publishes_artifacts_and_stops_the_flow_on_rejection(prefect_server, eve_home, tmp_path):
    from prefect import flow, get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from tasks.quality.gate import QualityGateFailed
    from tasks.quality.prefect_tasks import gate_captions

    good, _ = planted_dataset(tmp_path / "good")
    # Every sample three times (same image, same caption): a version of duplicated samples.
    bad = write_dataset(tmp_path / "bad", {f"k{i}": text for i, text in enumerate(clean_captions(5) * 3)},
                        images={f"k{i}": f"k{i % 5}".encode() for i in range(15)})

    @flow(name="quality-gate-test")
    def gate(input_location: str, output_dir: str):
        return gate_captions(input_location, output_dir)

    state = gate(str(good), str(tmp_path / "good-out"), return_state=True)
    result = state.result()
    assert result.passed and result.counts.num_kept == 40

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    by_key = {artifact.key: artifact for artifact in artifacts}
    assert by_key["quality-report-eve-caption-quality"].data.startswith("# Quality gate PASSED")
    assert "quality-deltas-eve-caption-quality" in by_key
    # The version's GX Data Docs under the platform home, linked from the run.
    link = by_key["quality-data-docs-eve-caption-quality"]
    assert f"(file://{eve_home}/quality/" in link.data and result.data_docs_index in link.description
    assert "GX Data Docs of this dataset version" in by_key["quality-report-eve-caption-quality"].data

    with pytest.raises(QualityGateFailed, match="duplicate_rate"):
        gate(str(bad), str(tmp_path / "bad-out"))
    assert not (tmp_path / "bad-out" / "manifest.json").exists()
