"""The shard-parallel ingest without a cluster: the merge is deterministic whatever the task size and the order
shards finish in, a failing shard is reported with its reason and nothing is published, and the executor
switch builds the right task runner (Kubernetes: rendering only, there is no API server here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tasks.data.executor import DataExecutorConfig, dask_task_runner, render_dask_cluster_manifest
from tasks.data.shard_ingest import ShardsFailedError, validate_shard
from tasks.data.sources import SourceSpec
from tasks.data.steps import ingest_sources
from tasks.data.validate import ValidationConfig
from tests.tasks.data.conftest import encode, noise_image


def tree_bytes(folder: str | Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path: what "byte for byte the same dataset" compares."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class LazyShard:
    """A submitted shard that runs only when ``FinishInReverse`` says so."""

    def __init__(self, runner: "FinishInReverse", run) -> None:
        self.runner, self.run, self.outcome = runner, run, None

    def wait(self, timeout=None) -> None:
        self.runner.finish_all()

    def result(self, timeout=None, raise_on_failure=True):
        self.wait()
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


class FinishInReverse:
    """``submit`` for ``ingest_sources``: the first time the flow waits for any shard, every shard submitted so
    far runs, last submitted first. ``fail`` names shard indices whose task raises."""

    def __init__(self, fail: frozenset[int] = frozenset()) -> None:
        self.pending: list[LazyShard] = []
        self.finished: list[int] = []
        self.fail = fail

    def __call__(self, items, part_dir, shard, config) -> LazyShard:
        def run():
            if shard.index in self.fail:
                raise OSError(f"No space left on device: {part_dir}")
            return validate_shard(items, part_dir, shard, config)

        future = LazyShard(self, run)
        self.pending.append((shard.index, future))
        return future

    def finish_all(self) -> None:
        while self.pending:
            index, future = self.pending.pop()
            try:
                future.outcome = future.run()
            except OSError as error:
                future.outcome = error
            self.finished.append(index)


@pytest.fixture
def source_with_repeated_ids(tmp_path: Path) -> SourceSpec:
    """An image folder whose records repeat ids across shard boundaries (keys the merge must disambiguate
    exactly as the in-process ingest does) and hold broken items (quarantined, in order)."""
    folder = tmp_path / "repeated"
    (folder / "images").mkdir(parents=True)
    records = []
    for number in range(23):
        name = f"images/{number:02d}.png"
        broken = number in (4, 13)
        (folder / name).write_bytes(b"not an image" if broken else encode(noise_image(40, 40, seed=number)))
        records.append({"id": "same" if number % 3 == 0 else f"item{number}", "image": name,
                        "caption": f"noise picture number {number}"})
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return SourceSpec(kind="image_folder", location=str(folder), records_file="captions.jsonl")


def test_sharded_ingest_is_byte_identical_to_the_local_one_whatever_task_size_and_finish_order(
        eve_home, source_with_repeated_ids, broken_corpus) -> None:
    sources = [source_with_repeated_ids, SourceSpec(kind="image_folder", location=str(broken_corpus.folder),
                                                    records_file="captions.csv")]
    local = ingest_sources(sources, broken_corpus.config, max_items_per_shard=4)
    expected = tree_bytes(local.dataset_dir)
    assert local.num_quarantined >= 3 and local.num_shards >= 5
    keys = [json.loads(line) for line in Path(local.quarantine_path).read_text().splitlines()]
    assert keys, "the corpus plants quarantined items"

    # (task size, shards in flight): all shards at once finishing last first, and a window of 3 (the
    # flow reads on only as shards finish) finishing in reverse within each window
    for items_per_task, in_flight in ((1, 10_000), (4, 10_000), (7, 10_000), (1000, 10_000), (2, 3)):
        Path(local.dataset_dir).rename(Path(local.dataset_dir).with_name("moved-aside"))
        runner = FinishInReverse()
        executor = DataExecutorConfig(kind="dask-local", items_per_task=items_per_task, max_tasks_in_flight=in_flight)
        sharded = ingest_sources(sources, broken_corpus.config, max_items_per_shard=4, executor=executor, submit=runner)
        assert sharded.dataset_dir == local.dataset_dir
        assert tree_bytes(sharded.dataset_dir) == expected, f"{items_per_task} items per task"
        num_tasks = -(-local.num_in // items_per_task)
        assert sorted(runner.finished) == list(range(num_tasks))
        if in_flight > num_tasks:
            assert runner.finished == list(reversed(range(num_tasks)))
        else:
            assert runner.finished[:3] == [2, 1, 0]
        assert not list((eve_home / "staging").glob("ingest-parts-*"))  # merged, then removed
        shutil.rmtree(Path(local.dataset_dir).with_name("moved-aside"))


def test_a_shard_that_keeps_failing_is_named_with_its_reason_and_nothing_is_published(
        eve_home, source_with_repeated_ids) -> None:
    executor = DataExecutorConfig(kind="dask-local", items_per_task=5)
    with pytest.raises(ShardsFailedError) as raised:
        ingest_sources([source_with_repeated_ids], ValidationConfig.demo(), max_items_per_shard=4, executor=executor,
                       submit=FinishInReverse(fail=frozenset({2})))
    message = str(raised.value)
    assert "1 of 5 shard(s) failed" in message
    assert "shard 2 (items 10..14, from file://" in message and "captions.jsonl#L11)" in message
    assert "OSError: No space left on device" in message and "nothing was merged or registered" in message
    assert [f.shard.index for f in raised.value.failures] == [2]
    staged = sorted(p.name for p in (eve_home / "staging").iterdir())
    assert not [name for name in staged if name.startswith("ingest-") and not name.startswith("ingest-parts-")]
    parts = sorted((eve_home / "staging").glob("ingest-parts-*/part-*"))
    assert len(parts) == 4  # the finished shards stay staged for the rerun ...

    again = ingest_sources([source_with_repeated_ids], ValidationConfig.demo(), max_items_per_shard=4,
                           executor=executor, submit=FinishInReverse())
    assert again.num_in == 23 and again.reconciles  # ... which completes and removes them
    assert not list((eve_home / "staging").glob("ingest-parts-*"))


def test_the_executor_switch_builds_each_runner() -> None:
    with pytest.raises(ValueError, match="no task runner"):
        dask_task_runner(DataExecutorConfig())
    local = dask_task_runner(DataExecutorConfig(kind="dask-local", workers=3))
    assert local.cluster_kwargs["n_workers"] == 3 and local.cluster_class == "distributed.LocalCluster"
    slurm = dask_task_runner(DataExecutorConfig(kind="dask-slurm", workers=2, slurm={"partition": "cpu",
                                                                                      "walltime_minutes": 90}))
    assert slurm.cluster_class == "dask_jobqueue.SLURMCluster"
    assert {k: slurm.cluster_kwargs[k] for k in ("n_workers", "queue", "walltime")} == {
        "n_workers": 2, "queue": "cpu", "walltime": "01:30:00"}
    kubernetes = dask_task_runner(DataExecutorConfig(kind="dask-kubernetes"))
    assert kubernetes.address == "tcp://eve-data-scheduler.eve.svc.cluster.local:8786"


def test_the_dask_kubernetes_manifest_renders_a_dask_cluster_object() -> None:
    """Rendering only: no Kubernetes API server (or Dask operator) runs on this machine."""
    config = DataExecutorConfig(kind="dask-kubernetes", workers=5, cores_per_worker=2,
                                kubernetes={"namespace": "data", "cluster_name": "laion", "image": "registry/eve:1.2"})
    text = render_dask_cluster_manifest(config, {"PREFECT_API_URL": "http://prefect:4200/api", "ODD": 'a"b: {c}'})
    cluster = yaml.safe_load(text)
    assert (cluster["apiVersion"], cluster["kind"]) == ("kubernetes.dask.org/v1", "DaskCluster")
    assert cluster["metadata"] == {**cluster["metadata"], "name": "laion", "namespace": "data"}
    worker = cluster["spec"]["worker"]
    assert worker["replicas"] == 5
    container = worker["spec"]["containers"][0]
    assert container["image"] == "registry/eve:1.2" and container["resources"]["limits"]["cpu"] == "2"
    assert {"name": "ODD", "value": 'a"b: {c}'} in container["env"]  # every value quoted, never injected
    assert container["envFrom"] == [{"secretRef": {"name": "eve-prefect-worker", "optional": False}}]
    assert worker["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "eve-home"
    service = cluster["spec"]["scheduler"]["service"]
    assert service["selector"]["dask.org/cluster-name"] == "laion" and service["ports"][0]["port"] == 8786
