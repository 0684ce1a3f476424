"""The shard-parallel ingest against the in-process one, side by side in one run, on real image files.

    .venv/bin/python benchmarks/bench_dask_ingest.py                      # 2,000 items, 1 and 2 workers
    .venv/bin/python benchmarks/bench_dask_ingest.py --count 20000 --workers 1 2 4 --items-per-task 500

The input is an image folder (``captions.jsonl``) of real PNGs: the Tux Paint stamps (Debian
``tuxpaint-stamps-default``, 802 files) repeated until ``--count`` items, or synthetic demo scenes where
they are not installed. Every mode ingests the same folder into a fresh platform home and must give the
same dataset hash. It prints, per mode, items/s and the ratio to the in-process ingest, and the serial
parts of the sharded path measured on their own:

- read: the flow's one pass over the source (reading every file and hashing its line), which feeds the
  workers: the ceiling of any number of workers;
- merge: turning the finished parts into the dataset (read the parts, pack and write the shards), which
  runs in the flow alongside the shards; what is left of it after the last shard is the "tail";
- shards: wall time until the last shard finished, the parallel part.

The Dask modes use a ``distributed.LocalCluster`` and submit ``validate_shard`` directly (no Prefect
server needed); the flow adds one Prefect task run per shard on top, a few tens of milliseconds each.
The per-item costs it prints are the inputs of docs/data-at-scale.md's cost model.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STAMPS = Path("/usr/share/tuxpaint/stamps")


def build_source(root: Path, count: int) -> tuple[Path, str]:
    """An image folder of ``count`` items; returns it and what the images are."""
    root.mkdir(parents=True)
    stamps = sorted(STAMPS.rglob("*.png")) if STAMPS.is_dir() else []
    if stamps:
        pool, what = [p.read_bytes() for p in stamps], f"Tux Paint stamps ({len(stamps)} real PNGs, repeated)"
    else:
        import random

        from tasks.data.demo_source import DemoDataConfig, render_scene, sample_scene

        rng = random.Random(0)
        pool = [render_scene(sample_scene(rng, DemoDataConfig())) for _ in range(500)]
        what = "synthetic demo scenes (install tuxpaint-stamps-default for real files)"
    (root / "images").mkdir()
    with open(root / "captions.jsonl", "w") as records:
        for number, png in zip(range(count), itertools.cycle(pool)):
            name = f"images/{number:07d}.png"
            (root / name).write_bytes(png)
            records.write(json.dumps({"id": f"item{number}", "image": name, "caption": f"picture number {number}"}) + "\n")
    return root, what


class DaskSubmit:
    """``submit`` for ``ingest_sources``: ``validate_shard`` on a Dask client; notes when the last shard ends."""

    def __init__(self, client) -> None:
        self.client, self.last_done = client, 0.0

    def __call__(self, items, part_dir, shard, config):
        from tasks.data.shard_ingest import validate_shard

        future = self.client.submit(validate_shard, items, part_dir, shard, config, pure=False)
        future.add_done_callback(lambda _f: setattr(self, "last_done", max(self.last_done, time.perf_counter())))
        return future


def print_cost_model(worker_ms: float, flow_ms: float, cores_per_node: int) -> None:
    """Wall time and node-hours of the sharded ingest from the measured per-item costs: each worker (one
    core) validates an item in ``worker_ms``; the flow reads and merges an item in ``flow_ms`` (serial,
    overlapped with the workers), so ``wall = max(items x flow_ms, items x worker_ms / N)``."""
    print(f"\ncost model (ingest; a worker is one core, {cores_per_node}-core nodes, startup not included):")
    print(f"{'images':>8}{'workers':>9}{'wall':>10}{'node-hours':>12}  limited by")
    for items in (1_000_000, 33_000_000):
        for workers in (1, 8, 32, 128, 512):
            flow_s, workers_s = items * flow_ms / 1e3, items * worker_ms / 1e3 / workers
            wall_s = max(flow_s, workers_s)
            nodes = -(-workers // cores_per_node)  # the flow's own machine is one of them
            print(f"{items / 1e6:>7.0f}M{workers:>9}{format_hours(wall_s):>10}{nodes * wall_s / 3600:>12.1f}  "
                  f"{'the flow (read + merge)' if flow_s >= workers_s else 'the workers'}")


def format_hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def measure_merge(source, validation, items_per_task: int, max_items_per_shard: int, work: Path) -> float:
    """Items/s of the merge alone: parts made in this process first (not timed), then merged."""
    from tasks.data.shard_ingest import part_outcomes, shard_ranges, validate_shard
    from tasks.data.sharding import write_judged_items

    parts = []
    for shard, batch, _lines in shard_ranges(source.read(), items_per_task):
        parts.append(validate_shard(batch, work / f"part-{shard.index:06d}", shard, validation).part_dir)
    started = time.perf_counter()
    report = write_judged_items((o for part in parts for o in part_outcomes(part)), work / "merged", validation,
                                lambda: "", max_items_per_shard)
    return report.num_in / (time.perf_counter() - started)


def fresh_home() -> None:
    os.environ["EVE_HOME"] = tempfile.mkdtemp(prefix="bench-dask-home-")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000, help="items in the source (default 2000)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Dask worker counts to run")
    parser.add_argument("--items-per-task", type=int, default=250, help="items per shard task (default 250)")
    parser.add_argument("--max-items-per-shard", type=int, default=500)
    parser.add_argument("--cores-per-node", type=int, default=32, help="for the cost model's node-hours")
    args = parser.parse_args()

    import logging

    logging.getLogger("distributed").setLevel(logging.WARNING)
    from distributed import Client, LocalCluster

    from tasks.data.executor import DataExecutorConfig
    from tasks.data.shard_ingest import shard_ranges
    from tasks.data.sources import SourceSpec
    from tasks.data.steps import ingest_sources
    from tasks.data.validate import ValidationConfig

    work = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    folder, what = build_source(work / "source", args.count)
    source = SourceSpec(kind="image_folder", location=str(folder), records_file="captions.jsonl")
    validation = ValidationConfig.demo()
    print(f"{args.count} items: {what}; {os.cpu_count()} CPU core(s) on this machine "
          f"(load average {os.getloadavg()[0]:.1f}: other work shares them)")

    started = time.perf_counter()
    num_read = sum(shard.num_items for shard, _items, _lines in shard_ranges(source.read(), args.items_per_task))
    read_rate = num_read / (time.perf_counter() - started)

    fresh_home()
    started = time.perf_counter()
    local = ingest_sources([source], validation, args.max_items_per_shard)
    local_rate = args.count / (time.perf_counter() - started)
    merge_rate = measure_merge(source, validation, args.items_per_task, args.max_items_per_shard, work / "merge")
    print(f"\n{'mode':<28}{'items/s':>10}{'vs local':>10}{'shards s':>10}{'tail s':>9}")
    print(f"{'local (in-process)':<28}{local_rate:>10.0f}{1.0:>10.2f}")
    print(f"{'read only (flow, serial)':<28}{read_rate:>10.0f}{read_rate / local_rate:>10.2f}")
    print(f"{'merge only (flow, serial)':<28}{merge_rate:>10.0f}{merge_rate / local_rate:>10.2f}")

    worker_rates = {}
    for workers in args.workers:
        fresh_home()
        executor = DataExecutorConfig(kind="dask-local", workers=workers, items_per_task=args.items_per_task)
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            client.run(lambda: __import__("tasks.data.shard_ingest"))  # imports paid before the clock starts
            submit = DaskSubmit(client)
            started = time.perf_counter()
            report = ingest_sources([source], validation, args.max_items_per_shard, executor=executor, submit=submit)
            ended = time.perf_counter()
        if report.dataset_hash != local.dataset_hash:
            print(f"MISMATCH: {workers} worker(s) gave {report.dataset_hash}, local {local.dataset_hash}")
            return 1
        tail_seconds = ended - submit.last_done  # the merge left after the last shard (it runs alongside)
        rate = args.count / (ended - started)
        worker_rates[workers] = args.count / (submit.last_done - started)
        print(f"{f'dask-local, {workers} worker(s)':<28}{rate:>10.0f}{rate / local_rate:>10.2f}"
              f"{submit.last_done - started:>10.1f}{tail_seconds:>9.1f}")
    print(f"\nsame dataset hash in every mode: {local.dataset_hash[:16]}")
    merge_ms = 1e3 / merge_rate
    per_worker_ms = 1e3 / worker_rates[min(worker_rates)] * min(worker_rates)  # one worker's ms per item
    print(f"per item: validate {1e3 / local_rate:.2f} ms-core in-process, {per_worker_ms:.2f} ms-core on a Dask "
          f"worker (items shipped to it); flow read {1e3 / read_rate:.3f} ms and merge {merge_ms:.3f} ms (serial)")
    print_cost_model(per_worker_ms, 1e3 / read_rate + merge_ms, args.cores_per_node)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
