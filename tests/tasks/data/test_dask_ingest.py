"""The data run on real Dask clusters and a real Prefect server: a LocalCluster of 1, 2 and 3 workers and two
workers started as jobs on the real SLURM test cluster all give the local run's dataset hashes, and every
shard is a task run on the server (what the Prefect UI shows)."""

from __future__ import annotations

import os

import shutil
from pathlib import Path

import pytest

from tasks.data.demo_source import DemoDataConfig, DemoSources, demo_sources, generate_demo_data
from tasks.data.executor import DataExecutorConfig
from tasks.data.validate import ValidationConfig
from tests.tasks.data.test_executor import tree_bytes

pytestmark = pytest.mark.slow

ITEMS_PER_TASK = 5
MAX_ITEMS_PER_SHARD = 4


@pytest.fixture(scope="module")
def tiny_sources(tmp_path_factory) -> DemoSources:
    return demo_sources(generate_demo_data(tmp_path_factory.mktemp("dask-raw"), DemoDataConfig.tiny()))


def data_params(sources: DemoSources, name: str, executor: DataExecutorConfig):
    from flows.data_flow import DataFlowParams

    return DataFlowParams(
        dataset_name=name, sources=sources.captions, sft_sources=sources.sft, validation=ValidationConfig.demo(),
        sft_validation=ValidationConfig.demo().model_copy(update={"require_caption": False}), curate=False,
        max_items_per_shard=MAX_ITEMS_PER_SHARD, executor=executor,
    )


def task_runs_of(flow_run_id) -> list[str]:
    """``name:state`` of the shard task runs of one ``ingest-shards`` flow run, as the server has them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(f"{t.name}:{t.state.name}" for t in tasks if t.name.startswith("ingest-shard-"))


def shard_task_runs(parent_flow_run_id) -> dict[str, list[str]]:
    """Task runs of the ``ingest-shards`` subflows of a data run: run name -> state names, per subflow."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_flow_run_id])))
        ingest_runs = [run for run in subflows if run.name and client.read_flow(run.flow_id).name == "ingest-shards"]
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in ingest_runs])))
    return {"subflows": [run.state.name for run in ingest_runs],
            "shards": sorted(f"{t.name}:{t.state.name}" for t in tasks if t.name.startswith("ingest-shard-"))}


def local_hashes(sources: DemoSources, eve_home: Path) -> tuple[str, str]:
    from flows.data_flow import data_pipeline

    shutil.rmtree(eve_home / "staging", ignore_errors=True)
    result = data_pipeline(data_params(sources, "localrun", DataExecutorConfig()))
    return result.raw_version.dataset_hash, result.sft_version.dataset_hash


def test_local_dask_clusters_of_one_two_and_three_workers_give_the_local_hashes(
        prefect_server, eve_home, tiny_sources) -> None:
    """The ingest alone (registration is the same code whatever the executor, and the SLURM test runs it)."""
    from flows.data_flow import ingest_shards_flow
    from tasks.data.executor import dask_task_runner, flow_environment_kept
    from tasks.data.steps import ingest_sources

    validation = ValidationConfig.demo()
    local = ingest_sources(tiny_sources.captions, validation, MAX_ITEMS_PER_SHARD)
    expected = tree_bytes(local.dataset_dir)
    for workers in (1, 2, 3):
        shutil.rmtree(eve_home / "staging")  # the sharded run must produce its own, not find the local one's
        executor = DataExecutorConfig(kind="dask-local", workers=workers, items_per_task=ITEMS_PER_TASK)
        on_cluster = ingest_shards_flow.with_options(task_runner=dask_task_runner(executor))
        before = dict(os.environ)
        with flow_environment_kept():  # as run_ingest does: the nannies' OMP_NUM_THREADS=1 etc. stay theirs
            state = on_cluster(tiny_sources.captions, validation, MAX_ITEMS_PER_SHARD, executor, f"dask{workers}",
                               return_state=True)
        assert {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONHASHSEED")} == \
            {k: before.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONHASHSEED")}
        report = state.result()
        assert report.dataset_hash == local.dataset_hash and tree_bytes(report.dataset_dir) == expected, workers
        # 29 items in tasks of 5: six shards, each one task run of this flow run on the server
        assert task_runs_of(state.state_details.flow_run_id) == [f"ingest-shard-{k}:Completed" for k in range(6)]


def test_two_dask_workers_as_slurm_jobs_give_the_local_hashes(
        prefect_server, eve_home, tiny_sources, slurm_cluster, monkeypatch, tmp_path) -> None:
    from flows.data_flow import data_pipeline

    expected = local_hashes(tiny_sources, eve_home)
    shutil.rmtree(eve_home / "staging")
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.slurm_conf))  # where dask-jobqueue's sbatch submits
    logs = tmp_path / "worker-logs"
    executor = DataExecutorConfig(
        kind="dask-slurm", workers=2, items_per_task=ITEMS_PER_TASK, memory_per_worker="1GiB",
        slurm={"walltime_minutes": 10, "log_directory": str(logs),
               "job_script_prologue": [f"cd {Path(__file__).resolve().parents[3]}"]},
    )
    state = data_pipeline(data_params(tiny_sources, "slurmrun", executor), return_state=True)
    result = state.result()
    assert (result.raw_version.dataset_hash, result.sft_version.dataset_hash) == expected
    runs = shard_task_runs(state.state_details.flow_run_id)
    assert runs["subflows"] == ["Completed", "Completed"] and len(runs["shards"]) == 9, runs
    # the workers were SLURM jobs: each left its log, and sacct knows the jobs by their name
    assert len(list(logs.glob("eve-dask-worker-*.err"))) >= 2
    jobs = slurm_cluster.run("sacct", "--noheader", "--parsable2", "--format=JobName", "--starttime=now-1hour").stdout
    assert jobs.split().count("eve-dask-worker") >= 2, jobs
