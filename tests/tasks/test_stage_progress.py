"""Live progress of a stage: the job's throttled progress lines reach the task run's log while it runs,
move the stage's Prefect progress artifact, and no progress bar or launcher banner reaches the log."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from eve_model.training.config import StageId, StageOverrides
from eve_model.training.progress import ProgressReport, format_progress_line
from tasks.platform import REPO_ROOT
from tasks.stages import TrainingParameters, progress_artifact_key, stage_log_handler
from tasks.submit.spec import JobSpec
from tests.eve_model.training_datasets import write_tiny_dataset


class RecordedProgress:
    def __init__(self) -> None:
        self.reports: list[ProgressReport] = []

    def update(self, report: ProgressReport) -> None:
        self.reports.append(report)


def test_the_log_handler_keeps_platform_lines_drops_chatter_and_feeds_progress():
    emitted, progress = [], RecordedProgress()
    line = format_progress_line(ProgressReport(stage="2", step=3, total_steps=10, loss=1.5, samples_per_second=9.0,
                                               elapsed_seconds=3, eta_seconds=7))
    handle = stage_log_handler(emitted.append, progress)
    handle("[eve] job local-1 attempt 0: 2 rank(s)\n*****************************************\n"
           "Setting OMP_NUM_THREADS environment variable for each process to be 1 in default, to avoid ...\n\n"
           "tiny-stage-2:  30%|███       | 3/10 [00:03<00:07,  1.00step/s]\r"
           "Writing model shards: 100%|██████████| 1/1 [00:00<00:00, 353.26it/s]\n"
           f"{line}\n[eve.train] stage 2 complete after 10 steps: /x/final\n")
    assert emitted == ["[eve] job local-1 attempt 0: 2 rank(s)", line, "[eve.train] stage 2 complete after 10 steps: /x/final"]
    assert [(r.step, r.total_steps, r.loss) for r in progress.reports] == [(3, 10, 1.5)]


PROGRESS_STEPS = 150
"""Steps of the watched stage: long enough for the artifact to be seen between 0 and 100 % (60 were not, on an idle machine)."""


@pytest.mark.slow
def test_a_running_stage_shows_progress_in_its_log_and_its_artifact_before_it_ends(prefect_server, eve_home, tmp_path):
    from prefect import flow, get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        LogFilter,
        LogFilterFlowRunId,
    )

    from tasks.stages import plan_stage, train_stage

    manifest = write_tiny_dataset(tmp_path / "ds", num_samples=16, items_per_shard=8)
    training = TrainingParameters(
        job=JobSpec(name="progress", command=["eve_model.train"], workdir=REPO_ROOT, tasks_per_node=1,
                    time_limit_minutes=10, log_dir=tmp_path / "logs", pre_timeout_signal_seconds=0),
        stage_overrides={StageId.BASE_LLM: StageOverrides(
            max_steps=PROGRESS_STEPS, global_batch_size_samples=4, micro_batch_size_samples=4, max_sequence_length_tokens=96,
            checkpoint_interval_steps=1000, wandb_mode="disabled", progress_interval_seconds=0.5)},
    )
    seen_while_running: list[float] = []
    stop = threading.Event()
    run_ids: list = []  # this test's flow run: the session's server holds other runs' stage artifacts too

    def this_runs_progress(client):
        return client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[progress_artifact_key(StageId.BASE_LLM)]),
            flow_run_id=ArtifactFilterFlowRunId(any_=run_ids[:1])))

    def watch_artifact() -> None:
        with get_client(sync_client=True) as client:
            while not stop.is_set():
                if run_ids:
                    seen_while_running.extend(float(a.data) for a in this_runs_progress(client) if a.data is not None)
                time.sleep(0.3)

    @flow(name="stage-progress-test")
    def one_stage():
        from prefect.runtime import flow_run

        run_ids.append(flow_run.id)
        planned = plan_stage(StageId.BASE_LLM, training, str(tmp_path / "ds"), manifest.dataset_hash, None)
        return train_stage(planned, training)

    watcher = threading.Thread(target=watch_artifact, daemon=True)
    watcher.start()
    state = one_stage(return_state=True)
    stop.set()
    watcher.join(5)
    result = state.result()
    assert not result.skipped

    # The artifact moved through intermediate values while the job ran, and ended at 100 %.
    assert any(0 < value < 100 for value in seen_while_running), seen_while_running
    with get_client(sync_client=True) as client:
        final = this_runs_progress(client)
        assert len(final) == 1 and float(final[0].data) == 100.0 and "done, trained in" in final[0].description
        from prefect.logging.handlers import APILogHandler

        APILogHandler().flush()
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    messages = [log.message for log in sorted(logs, key=lambda log: log.timestamp)]
    progress_lines = [m for m in messages if m.startswith("[eve.progress] stage base-llm")]
    assert progress_lines[0].startswith(f"[eve.progress] stage base-llm step 1/{PROGRESS_STEPS}")
    assert progress_lines[-1].startswith(f"[eve.progress] stage base-llm step {PROGRESS_STEPS}/{PROGRESS_STEPS} (100.0%)")
    assert 3 <= len(progress_lines) <= PROGRESS_STEPS  # throttled: not one per step unless the steps are slow
    assert not [m for m in messages if "%|" in m or "OMP_NUM_THREADS" in m or m.strip("*") == ""]
    # Everything the job printed, chatter included, stays in its own log file.
    assert "[eve.progress]" in "".join(p.read_text() for p in Path(result.output_dir, "logs").glob("*.log"))
