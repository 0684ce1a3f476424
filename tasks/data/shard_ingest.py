"""Ingest shard-parallel: shards of the source listing validated on Dask workers, merged deterministically.

How one run goes (``ingest_sharded``, called inside the ``ingest-shards`` flow whose task runner is the
executor's ``DaskTaskRunner``):

1. The flow reads the sources once, in their reading order (readers list files sorted), and cuts the
   stream into shard tasks of ``items_per_task`` consecutive items: task ``k`` holds items
   ``[k * n, (k + 1) * n)``. It hashes every item's line as it reads (``source_content_sha256``, the
   same hash as the in-process ingest) and a shard's own lines into the shard's content key.
2. Each shard is one Prefect task run (``ingest-shard-<k>``) on a worker: it validates its items and
   publishes a *part* under ``<home>/staging/ingest-parts-<key>/part-<k>-<content16>/`` with one atomic
   rename (``tasks.publish.produce_once``): accepted samples in one tar, and in the part's manifest the
   original keys, source URIs and quarantine records, in item order. A part that already verifies is
   reused, so a rerun after a crash redoes only the shards that had not finished.
3. Once every shard finished, the flow merges the parts *in shard order* through the one write path
   of every ingest (``tasks.data.sharding.write_judged_items``): key disambiguation, shard packing,
   quarantine list and report are computed exactly as the in-process ingest computes them. So the
   dataset hash is the same, byte for byte, whatever the number of workers, whatever order shards
   finish in, and the same as ``executor: local``. The merge writes privately and publishes with one
   rename (``tasks.publish``); the parts are removed once the dataset is published.

Faults: a shard whose task raises is retried by Prefect (``shard_retries``); a worker that dies
mid-shard (killed, out of memory, its SLURM job pre-empted) costs that shard only: Dask runs it again on
another worker, and the part it had half-written is a private folder nobody reads. A shard that still
fails (an error on every try, or ``allowed_worker_deaths`` workers lost on it) fails the ingest with
``ShardsFailedError``, one line per failed shard with its item range and reason; the merge does not
run, so nothing half-written is published or registered. Why not quarantine the failed shard's items
and carry on: the dataset's content would then depend on which machines failed, not on the data.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from prefect import task
from prefect.cache_policies import NONE
from pydantic import BaseModel

from eve_model.shards import DatasetIntegrityError, ShardWriter, iter_samples, read_manifest, verify_dataset
from tasks.data.sharding import AcceptedItem, IngestReport, QuarantineRecord, source_item_line, write_judged_items
from tasks.data.sources import RawItem
from tasks.data.validate import Quarantined, ValidationConfig, validate_item
from tasks.publish import produce_once

PART_FORMAT = "eve-ingest-part/1"


class ShardRange(BaseModel):
    """Which source items one shard task holds, and their content."""

    index: int
    """Position of the shard in the source listing (0, 1, ...): the merge order."""

    first_item: int
    """Reading-order number of the shard's first item (0-based)."""

    num_items: int
    """Items in the shard (the task size; the last shard may hold fewer)."""

    content_sha256: str
    """sha256 over the shard's items' source lines (``source_item_line``): names its part, so a part is
    reused only for exactly these items."""

    first_source_uri: str
    """Where the shard's first item came from, to name the shard in a failure report."""

    def describe(self) -> str:
        return (f"shard {self.index} (items {self.first_item}..{self.first_item + self.num_items - 1}, "
                f"from {self.first_source_uri})")


class ShardPart(BaseModel):
    """What a shard task left in staging: counts, and where its part is."""

    shard: ShardRange
    part_dir: str
    """The published part (a dataset folder whose manifest carries keys, URIs and quarantine records)."""

    num_accepted: int
    num_quarantined: int


class ShardFailure(BaseModel):
    """A shard that could not be ingested, with the reason."""

    shard: ShardRange
    reason: str

    def line(self) -> str:
        return f"{self.shard.describe()}: {self.reason}"


class ShardsFailedError(RuntimeError):
    """Shards failed after their retries: the ingest merged nothing and nothing was registered."""

    def __init__(self, failures: list[ShardFailure], num_shards: int) -> None:
        self.failures = failures
        lines = "\n".join(f"  - {failure.line()}" for failure in failures)
        super().__init__(
            f"{len(failures)} of {num_shards} shard(s) failed after their retries; nothing was merged or "
            f"registered (the finished shards stay staged: a rerun redoes only these):\n{lines}"
        )


# ----------------------------------------------------------------------- one shard, on a worker


def _part_key(position: int) -> str:
    """Key of a sample inside a part: its position (original keys may repeat; the merge restores them)."""
    return f"i{position:09d}"


def finished_part(part_dir: str | Path, shard: ShardRange, check_shards: bool = True) -> ShardPart | None:
    """The part in ``part_dir`` if it is complete, verifies (its tar too, with ``check_shards``) and was
    made from exactly ``shard``'s items."""
    try:
        manifest = verify_dataset(part_dir, check_shards=check_shards)
    except DatasetIntegrityError:
        return None
    extra = manifest.extra
    if extra.get("format") != PART_FORMAT or extra.get("content_sha256") != shard.content_sha256:
        return None
    return ShardPart(shard=shard, part_dir=str(part_dir), num_accepted=len(extra["keys"]),
                     num_quarantined=len(extra["quarantine"]))


def validate_shard(items: list[RawItem], part_dir: str | Path, shard: ShardRange, config: ValidationConfig) -> ShardPart:
    """Validate one shard's items into a part (produced privately, published with one rename); an
    identical finished part is reused."""
    def produce(private: Path) -> None:
        keys: list[str] = []
        source_uris: list[str] = []
        quarantine: list[str] = []  # JSON text: the manifest sorts dict keys, a record keeps its field order
        with ShardWriter(private, max_items_per_shard=max(1, len(items))) as writer:
            for item in items:
                outcome = validate_item(item, config)
                if isinstance(outcome, Quarantined):
                    quarantine.append(json.dumps(outcome.to_json(), ensure_ascii=False))
                    continue
                keys.append(outcome.key)
                source_uris.append(item.source_uri)
                outcome.key = _part_key(len(keys) - 1)
                writer.write(outcome)
            writer.extra.update({"format": PART_FORMAT, "content_sha256": shard.content_sha256,
                                 "shard": shard.model_dump(), "keys": keys, "source_uris": source_uris,
                                 "quarantine": quarantine})

    produce_once(Path(part_dir), produce, lambda folder: finished_part(folder, shard) is not None)
    part = finished_part(part_dir, shard, check_shards=False)  # verified by produce_once, or written just now
    if part is None:  # pragma: no cover - produce_once returns only once the part verifies
        raise DatasetIntegrityError(f"{part_dir}: the shard's part did not verify after it was published")
    return part


@task(name="ingest-shard", task_run_name="ingest-shard-{shard.index}", retries=2, retry_delay_seconds=5,
      cache_policy=NONE, persist_result=False)
def ingest_shard_task(items: list[RawItem], part_dir: str, shard: ShardRange, config: ValidationConfig) -> ShardPart:
    """One shard of an ingest on a Dask worker: validate its items into a staged part."""
    return validate_shard(items, part_dir, shard, config)


# ----------------------------------------------------------------------- the merge, in the flow


def part_outcomes(part_dir: str | Path) -> Iterator[AcceptedItem | QuarantineRecord]:
    """A part's items as ``write_judged_items`` takes them: accepted samples with their original keys,
    then the quarantine records, each in item order (the shards' and the quarantine list's order do not
    depend on how the two interleave)."""
    manifest = read_manifest(part_dir)
    keys, source_uris = manifest.extra["keys"], manifest.extra["source_uris"]
    for sample in iter_samples(part_dir, manifest=manifest):  # each tar checked against its hash as it is read
        position = int(sample.key[1:])
        sample.key = keys[position]
        yield source_uris[position], sample
    yield from (json.loads(record) for record in manifest.extra["quarantine"])


class ShardFuture(Protocol):
    """What ``submit`` returns: a Prefect future (``PrefectDaskFuture``) or anything that waits alike."""

    def wait(self, timeout: float | None = None) -> None: ...

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any: ...


SubmitShard = Callable[[list[RawItem], str, ShardRange, ValidationConfig], ShardFuture]


def submit_to_task_runner(retries: int) -> SubmitShard:
    """``submit`` for ``ingest_sharded`` inside a flow: one ``ingest-shard`` task run per shard on the
    flow's task runner (the Dask cluster)."""
    shard_task = ingest_shard_task.with_options(retries=retries)
    return lambda items, part_dir, shard, config: shard_task.submit(items, part_dir, shard, config)


def shard_ranges(items: Iterable[RawItem], items_per_task: int) -> Iterator[tuple[ShardRange, list[RawItem], list[bytes]]]:
    """The reading-order stream cut into shards of ``items_per_task`` items, each with its range and its
    items' source lines."""
    iterator = iter(items)
    for index in itertools.count():
        batch = list(itertools.islice(iterator, items_per_task))
        if not batch:
            return
        lines = [source_item_line(item) for item in batch]
        yield (ShardRange(index=index, first_item=index * items_per_task, num_items=len(batch),
                          content_sha256=hashlib.sha256(b"".join(lines)).hexdigest(),
                          first_source_uri=batch[0].source_uri),
               batch, lines)


def _failure_reason(error: BaseException, allowed_worker_deaths: int) -> str:
    if type(error).__name__ == "KilledWorker":
        return (f"the worker running it died {allowed_worker_deaths + 1} time(s) (killed, out of memory or its "
                f"job ended): {error}")
    return f"{type(error).__name__}: {error}"


class _MergeAborted(Exception):
    """A shard failed: the merge in progress stops (its private output is discarded)."""


class _OrderedMerge(threading.Thread):
    """The merge, running while shards are still being validated: it writes each part as soon as every
    part before it is finished (``add``, in shard order), so only the last parts are merged after the
    last shard ends. Its output is private until the caller publishes it."""

    def __init__(self, write: Callable[[Iterator[AcceptedItem | QuarantineRecord]], IngestReport]) -> None:
        super().__init__(name="ingest-merge", daemon=True)
        self._write, self._parts = write, queue.Queue()
        self.report: IngestReport | None = None
        self.error: BaseException | None = None

    def _judged(self) -> Iterator[AcceptedItem | QuarantineRecord]:
        while (part := self._parts.get()) is not None:
            if isinstance(part, _MergeAborted):
                raise part
            yield from part_outcomes(part.part_dir)

    def run(self) -> None:
        try:
            self.report = self._write(self._judged())
        except BaseException as error:  # noqa: BLE001 - handed to the flow's thread by ``finish``
            self.error = error

    def add(self, part: ShardPart) -> None:
        self._parts.put(part)

    def finish(self) -> IngestReport:
        self._parts.put(None)
        self.join()
        if self.error is not None:
            raise self.error
        return self.report

    def abort(self) -> None:
        self._parts.put(_MergeAborted())
        self.join()


def ingest_sharded(
    items: Iterable[RawItem],
    out_dir: Path,
    parts_dir: Path,
    config: ValidationConfig,
    submit: SubmitShard,
    max_items_per_shard: int,
    items_per_task: int,
    max_tasks_in_flight: int,
    extra: dict | None = None,
    published_dir: Path | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    shard_progress: Callable[[str], None] | None = None,
    allowed_worker_deaths: int = 3,
) -> IngestReport:
    """Produce the ingest of ``items`` in ``out_dir`` (a private folder that will be renamed to
    ``published_dir``, ``tasks.publish``) from shards validated through ``submit``; ``parts_dir`` holds
    the staged parts (on storage every worker sees; the caller removes it once the dataset is
    published). ``shard_progress`` hears a line per finished shard, ``progress`` the merge's counts.
    Raises ``ShardsFailedError`` (the merge stopped, its output discarded) if a shard failed after its
    retries.

    The flow's thread reads and submits; the merge runs alongside in shard order (``_OrderedMerge``),
    so the serial work after the last shard is the merge of the parts not yet merged, not all of it."""
    source_content = hashlib.sha256()
    in_flight: dict[int, tuple[ShardRange, ShardFuture]] = {}
    failures: list[ShardFailure] = []
    shards: list[ShardRange] = []
    finished = 0
    merge = _OrderedMerge(lambda judged: write_judged_items(
        judged, out_dir, config, source_content.hexdigest, max_items_per_shard, extra, progress=progress,
        published_dir=published_dir))
    merge.start()

    def collect(index: int) -> None:  # always the lowest index in flight: parts reach the merge in order
        nonlocal finished
        shard, future = in_flight.pop(index)
        try:
            part = future.result()
            finished += 1
            if not failures:
                merge.add(part)
        except BaseException as error:  # noqa: BLE001 - every shard's failure is reported, none raised alone
            failures.append(ShardFailure(shard=shard, reason=_failure_reason(error, allowed_worker_deaths)))
        if shard_progress is not None:
            shard_progress(f"shards: {finished} finished, {len(failures)} failed, {len(in_flight)} running; "
                           f"{sum(s.num_items for s in shards)} items read")

    try:
        for shard, batch, lines in shard_ranges(items, items_per_task):
            for line in lines:
                source_content.update(line)
            shards.append(shard)
            part_dir = parts_dir / f"part-{shard.index:06d}-{shard.content_sha256[:16]}"
            in_flight[shard.index] = (shard, submit(batch, str(part_dir), shard, config))
            while len(in_flight) >= max_tasks_in_flight:  # bounded memory: wait for the oldest shard
                collect(min(in_flight))
        while in_flight:
            collect(min(in_flight))
    except BaseException:
        merge.abort()
        raise
    if failures:
        merge.abort()
        raise ShardsFailedError(sorted(failures, key=lambda f: f.shard.index), len(shards))
    return merge.finish()


__all__ = [
    "ShardFailure",
    "ShardPart",
    "ShardRange",
    "ShardsFailedError",
    "finished_part",
    "ingest_shard_task",
    "ingest_sharded",
    "part_outcomes",
    "shard_ranges",
    "submit_to_task_runner",
    "validate_shard",
]
