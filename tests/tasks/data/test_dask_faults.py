"""The kill drill on a real Dask cluster and a real Prefect server: a worker killed with SIGKILL mid-shard costs
that shard only and the run ends with the local run's hash; a shard whose workers keep dying is reported with
its reason, and nothing is published or registered."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from tasks.data.executor import DataExecutorConfig, dask_task_runner, flow_environment_kept
from tasks.data.sources import SourceSpec
from tasks.data.validate import ValidationConfig
from tests.tasks.data.conftest import encode, noise_image

pytestmark = pytest.mark.slow

NUM_ITEMS = 16
ITEMS_PER_TASK = 4
PRIVATE_PART = re.compile(r"^\.(?P<part>part-(?P<index>\d{6})-[0-9a-f]{16})\.tmp-[^/]+-(?P<pid>\d+)-[0-9a-f]{8}$")


@pytest.fixture(scope="module")
def slow_source(tmp_path_factory) -> SourceSpec:
    """Large noise PNGs: a shard takes long enough to validate (a full decode per image) to be killed in."""
    folder = tmp_path_factory.mktemp("slow-source")
    (folder / "images").mkdir()
    records = []
    for number in range(NUM_ITEMS):
        name = f"images/{number:02d}.png"
        (folder / name).write_bytes(encode(noise_image(1000, 1000, seed=number)))
        records.append({"id": f"big{number}", "image": name, "caption": f"a large noise picture, number {number}"})
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return SourceSpec(kind="image_folder", location=str(folder), records_file="captions.jsonl")


class KillFirstShardWorker(threading.Thread):
    """Watches the staged parts. A shard being written is a private folder carrying its writer's pid
    (``tasks.publish``): the first one seen gets its worker killed with SIGKILL, and every attempt seen
    is recorded (shard index -> the private folders its attempts wrote; each lasts about a second here)."""

    def __init__(self, staging: Path) -> None:
        super().__init__(daemon=True)
        self.staging, self.killed_shard = staging, None
        self.attempts: dict[int, set[str]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for folder in self.staging.glob("ingest-parts-*/.part-*"):
                match = PRIVATE_PART.match(folder.name)
                if not match or int(match["pid"]) == os.getpid():
                    continue
                self.attempts.setdefault(int(match["index"]), set()).add(folder.name)
                if self.killed_shard is None:
                    os.kill(int(match["pid"]), signal.SIGKILL)
                    self.killed_shard = int(match["index"])
            time.sleep(0.005)


def shard_task_runs(flow_run_id) -> dict[str, str]:
    """Final state of each shard task run of one flow run, as the server has it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: run.state.name for run in runs if run.name.startswith("ingest-shard-")}


def test_a_worker_killed_mid_shard_costs_that_shard_only(prefect_server, eve_home, slow_source) -> None:
    from flows.data_flow import ingest_shards_flow
    from tasks.data.steps import ingest_sources

    validation = ValidationConfig.demo()
    expected = ingest_sources([slow_source], validation, max_items_per_shard=5).dataset_hash
    for folder in (eve_home / "staging").iterdir():
        os.rename(folder, folder.with_name("aside-" + folder.name))

    executor = DataExecutorConfig(kind="dask-local", workers=2, items_per_task=ITEMS_PER_TASK, memory_per_worker="1GiB")
    killer = KillFirstShardWorker(eve_home / "staging")
    killer.start()
    try:
        with flow_environment_kept():
            state = ingest_shards_flow.with_options(task_runner=dask_task_runner(executor))(
                [slow_source], validation, 5, executor, "killdrill", return_state=True)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed_shard is not None, "no shard was caught mid-write: nothing was killed"
    report = state.result()
    assert report.dataset_hash == expected and report.num_in == NUM_ITEMS and report.reconciles
    shards = range(NUM_ITEMS // ITEMS_PER_TASK)
    attempts = {index: len(folders) for index, folders in killer.attempts.items()}
    # that shard only: attempted again, and no other shard twice (a short attempt may go unseen)
    assert attempts.pop(killer.killed_shard) == 2 and set(attempts.values()) <= {1}, killer.attempts
    assert shard_task_runs(state.state_details.flow_run_id) == {f"ingest-shard-{k}": "Completed" for k in shards}


def test_a_shard_whose_workers_keep_dying_is_reported_and_nothing_is_registered(
        prefect_server, eve_home, slow_source) -> None:
    from flows.data_flow import DataFlowParams, data_pipeline
    from tasks.data.versioning import DatasetRegistry

    executor = DataExecutorConfig(kind="dask-local", workers=2, items_per_task=ITEMS_PER_TASK, memory_per_worker="1GiB",
                                  allowed_worker_deaths=0)  # the first death is already one too many
    params = DataFlowParams(dataset_name="killed", sources=[slow_source], validation=ValidationConfig.demo(),
                            curate=False, max_items_per_shard=5, executor=executor)
    killer = KillFirstShardWorker(eve_home / "staging")
    killer.start()
    try:
        state = data_pipeline(params, return_state=True)
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed_shard is not None
    assert state.is_failed()
    with pytest.raises(Exception) as raised:
        state.result()
    message = str(raised.value)
    assert f"shard {killer.killed_shard} (items {killer.killed_shard * ITEMS_PER_TASK}.." in message, message
    assert "the worker running it died 1 time(s)" in message and "nothing was merged or registered" in message
    assert DatasetRegistry.from_settings().list_versions() == []  # the flow stopped before registering
    staged = [p.name for p in (eve_home / "staging").iterdir()]
    assert not [name for name in staged if name.startswith("ingest-") and not name.startswith("ingest-parts-")], staged
