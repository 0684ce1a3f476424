"""Prefect tasks of the data pipeline (curation's task lives in ``tasks.data.curate``): thin wrappers that declare retries, caching and artifacts.

The logic lives in plain functions (``sources``, ``sharding``, ``versioning``, ``demo_source``,
``tasks.data.curate``); these wrappers add what only an orchestrated run needs: progress in the run log,
table artifacts with the counts, content-based cache keys (an unchanged source is not ingested again
and an unchanged dataset is not curated again), and an OpenLineage run (``tasks.lineage.openlineage``)
per ingest and registration naming what it read and wrote by content hash.

Where outputs go: ingest and curation write into ``<home>/staging/<content key>/``, produced in a
private folder and published with one atomic rename (``tasks.publish``); a directory there is
reused only if its manifest verifies, and it becomes a registered version only through
``register_dataset_version`` (DVC push, then git tag).

Failures that waiting cannot fix are not retried: a source location that does not exist fails the
ingest in seconds with one line (``SourceNotFoundError``), and an ingest that accepts nothing fails
with its counts (``NothingAcceptedError``) before anything is registered. Only errors that can pass
(network, timeouts: ``is_transient_read_error``) are retried.
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Literal

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event
from pydantic import BaseModel

from eve_model.shards import DatasetIntegrityError, verify_dataset
from tasks.data.demo_source import DemoSources, demo_sources, ensure_demo_data
from tasks.data.executor import DataExecutorConfig
from tasks.data.shard_ingest import SubmitShard, ingest_sharded, submit_to_task_runner
from tasks.data.sharding import REPORT_FILE, IngestReport, ingest_items
from tasks.data.sources import SourceSpec, check_source, is_transient_read_error, source_fingerprint
from tasks.data.validate import ValidationConfig
from tasks.data.versioning import DatasetRegistry, DatasetVersion
from tasks.lineage.openlineage import LineageDataset, lineage_run
from tasks.lineage.openlineage_refs import dataset_ref, version_ref
from tasks.platform import PlatformSettings
from tasks.publish import produce_once

# Bump when the ingest/curation logic changes what it writes: it is part of every cache key.
PIPELINE_CODE_VERSION = "data-3"
CACHE_EXPIRATION = timedelta(days=30)


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join((PIPELINE_CODE_VERSION, *parts)).encode()).hexdigest()


def ingest_cache_key(sources: list[SourceSpec], validation: ValidationConfig, max_items_per_shard: int) -> str:
    """Content key of an ingest: source fingerprints + rules + shard size + code version."""
    return _key(*(source_fingerprint(s) for s in sources), validation.model_dump_json(), str(max_items_per_shard))


def staging_dir(kind: str, key: str) -> Path:
    return PlatformSettings.load().path("staging") / f"{kind}-{key[:24]}"


def _reusable(directory: Path) -> bool:
    """A finished ingest: its report exists and its manifest and shards verify."""
    if not (directory / REPORT_FILE).exists():
        return False
    try:
        verify_dataset(directory)
        return True
    except DatasetIntegrityError:
        return False


@task(name="prepare-demo-source", retries=0)
def prepare_demo_source() -> DemoSources:
    """Regenerate data/demo if missing, check it against data.dvc, and describe its sources."""
    return demo_sources(ensure_demo_data())


class NothingAcceptedError(RuntimeError):
    """An ingest quarantined every item: it fails with the counts, and no version is registered."""


def nothing_accepted_summary(report: IngestReport) -> str:
    """One line saying that an ingest accepted nothing, why, and where the quarantine list is."""
    reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(report.quarantined_by_reason.items()))
    return (
        f"ingest accepted nothing: {report.num_in} item(s) in, {report.num_quarantined} quarantined"
        f"{' (' + reasons + ')' if reasons else ''}; no dataset version was registered; "
        f"quarantine list: {report.quarantine_path}"
    )


def ingest_sources(
    sources: list[SourceSpec],
    validation: ValidationConfig,
    max_items_per_shard: int = 500,
    progress=None,
    executor: DataExecutorConfig | None = None,
    submit: SubmitShard | None = None,
    shard_progress=None,
) -> IngestReport:
    """Ingest every source into one staged dataset; reuses an identical earlier ingest.

    ``executor`` local (or None): in this process. A ``dask-*`` executor: shard-parallel
    (``tasks.data.shard_ingest``), each shard submitted with ``submit`` (default: one Prefect task run
    on the current flow's task runner, which must be that executor's ``DaskTaskRunner``). Both give the
    same staged dataset, so the staging folder and its key do not depend on the executor.

    Raises ``SourceNotFoundError`` before reading anything if a source location does not exist.
    The report may say that nothing was accepted: ``require_accepted`` turns that into the failure."""
    for source in sources:
        check_source(source)
    key = ingest_cache_key(sources, validation, max_items_per_shard)
    out_dir = staging_dir("ingest", key)
    parts_dir = staging_dir("ingest-parts", key)
    extra = {"sources": [s.model_dump() for s in sources]}
    sharded = executor is not None and not executor.is_local

    def produce(private: Path) -> None:
        items = itertools.chain.from_iterable(source.read() for source in sources)
        if not sharded:
            ingest_items(items, private, validation, max_items_per_shard=max_items_per_shard, extra=extra,
                         progress=progress, published_dir=out_dir)
            return
        ingest_sharded(
            items, private, parts_dir, validation, submit or submit_to_task_runner(executor.shard_retries),
            max_items_per_shard=max_items_per_shard, items_per_task=executor.items_per_shard_task(max_items_per_shard),
            max_tasks_in_flight=executor.tasks_in_flight(), extra=extra, published_dir=out_dir, progress=progress,
            shard_progress=shard_progress, allowed_worker_deaths=executor.allowed_worker_deaths,
        )

    produce_once(out_dir, produce, _reusable)  # private folder, then one atomic rename (tasks.publish)
    if sharded:
        shutil.rmtree(parts_dir, ignore_errors=True)  # the parts are in the published dataset now
    return IngestReport.model_validate_json((out_dir / REPORT_FILE).read_text())


def require_accepted(report: IngestReport) -> IngestReport:
    """``report``, or ``NothingAcceptedError`` with its counts if no item was accepted (the quarantine
    list stays in staging for inspection; nothing may be registered from it)."""
    if report.num_accepted == 0:
        raise NothingAcceptedError(nothing_accepted_summary(report))
    return report


def retry_if_transient(_task, _task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed ingest only when its error can pass."""
    try:
        state.result()
    except Exception as error:  # noqa: BLE001 - the failure being judged
        return is_transient_read_error(error)
    return False


@task(
    name="ingest-sources",
    retries=2,
    retry_delay_seconds=[10, 60],
    retry_condition_fn=retry_if_transient,
    cache_key_fn=lambda context, parameters: "ingest-" + ingest_cache_key(
        parameters["sources"], parameters["validation"], parameters.get("max_items_per_shard", 500)
    ),
    cache_expiration=CACHE_EXPIRATION,
    persist_result=True,
)
def ingest_sources_task(
    sources: list[SourceSpec], validation: ValidationConfig, max_items_per_shard: int = 500, label: str = "dataset"
) -> IngestReport:
    """Read, validate and shard the sources in this process; counts go to a table artifact, bad items to
    quarantine. Fails without retrying when a source does not exist or nothing is accepted."""
    logger = get_run_logger()
    return ingest_with_records(sources, validation, label, lambda: ingest_sources(
        sources, validation, max_items_per_shard,
        progress=lambda n, ok, bad: logger.info("ingest: %d items read, %d accepted, %d quarantined", n, ok, bad),
    ))


def ingest_on_cluster(
    sources: list[SourceSpec], validation: ValidationConfig, max_items_per_shard: int, executor: DataExecutorConfig,
    label: str = "dataset",
) -> IngestReport:
    """The ingest shard-parallel on the current flow's Dask task runner (one ``ingest-shard`` task run per
    shard), with the same records as ``ingest_sources_task``: the body of the ``ingest-shards`` flow."""
    logger = get_run_logger()
    return ingest_with_records(sources, validation, label, lambda: ingest_sources(
        sources, validation, max_items_per_shard, executor=executor,
        progress=lambda n, ok, bad: logger.info("ingest merge: %d items, %d accepted, %d quarantined", n, ok, bad),
        shard_progress=logger.info,
    ))


def ingest_with_records(
    sources: list[SourceSpec], validation: ValidationConfig, label: str, run_ingest: Callable[[], IngestReport]
) -> IngestReport:
    """Run an ingest inside its OpenLineage run and publish what it did: the counts table, the rules in
    force, the lineage output; fails with the counts if nothing was accepted (``require_accepted``)."""
    logger = get_run_logger()
    read = [LineageDataset(name=s.location, content_hash=source_fingerprint(s), extra={"kind": s.kind}) for s in sources]
    with lineage_run("ingest", read) as written:
        report = run_ingest()
        create_table_artifact(
            key=f"ingest-counts-{label}".replace("_", "-").lower(),
            table=report.table_rows(),
            description=f"Ingest of {len(sources)} source(s) -> dataset {report.dataset_hash[:16]}; "
            f"quarantine list: {report.quarantine_path}",
        )
        rules = ingest_rules_in_force(sources, validation)
        create_markdown_artifact(
            key=f"ingest-rules-{label}".replace("_", "-").lower(),
            markdown="### Ingest rules in force\n\n" + "\n".join(f"- {line}" for line in rules),
            description=f"sources read and the validation rules applied to {label}",
        )
        logger.info("ingest rules: %s", "; ".join(rules))
        require_accepted(report)
        written.append(dataset_ref(report.dataset_dir, label, report.dataset_hash, report.num_accepted))
    return report


def ingest_rules_in_force(sources: list[SourceSpec], validation: ValidationConfig) -> list[str]:
    """What an ingest read and how it judged it, one sentence each: every source's layout and field
    mapping, then the validation rules."""
    return [f"source: {source.resolved().describe()}" for source in sources] + validation.rules_in_force()


RegisteredBy = Literal["ingest", "retrain"]
"""Who registers a dataset version: an ingest (``eve data ingest``, the data-pipeline flow on its
own), whose new raw versions start retrains, or a retrain, whose own versions never do."""
DATASET_REGISTERED_EVENT = "eve.dataset.registered"


def announce_new_version(version: DatasetVersion, registered_by: RegisteredBy) -> None:
    """Emit ``eve.dataset.registered`` for a version that was just created. The resource carries
    ``eve.dataset.registered-by``: prefect.yaml's retrain-on-new-data trigger matches only ``ingest``,
    so a retrain's own registrations can never start another retrain."""
    emit_event(
        event=DATASET_REGISTERED_EVENT,
        resource={
            "prefect.resource.id": f"eve.dataset.{version.name}",
            "eve.dataset.hash": version.dataset_hash,
            "eve.dataset.tag": version.tag,
            "eve.dataset.registered-by": registered_by,
        },
        payload={"tag": version.tag, "dataset_hash": version.dataset_hash, "num_items": version.num_items,
                 "dvc_md5": version.dvc_md5, "registered_by": registered_by},
    )


@task(name="register-dataset-version", retries=1, retry_delay_seconds=30, timeout_seconds=3 * 3600)
def register_dataset_version(
    dataset_dir: str, name: str, dataset_hash: str | None = None, registered_by: RegisteredBy = "retrain"
) -> DatasetVersion:
    """Push the dataset to the DVC remote (with backoff) and tag it in the dataset registry.

    Given ``dataset_hash``, an already registered version is returned even if ``dataset_dir`` is gone.
    Only a version this call created is announced (``announce_new_version``): registering the same
    content again emits nothing, so it triggers nothing.
    """
    staged = [dataset_ref(dataset_dir, name, dataset_hash)] if dataset_hash is None or Path(dataset_dir).exists() else []
    with lineage_run("register-dataset", staged) as written:
        registration = DatasetRegistry.from_settings().register_version(dataset_dir, name, dataset_hash=dataset_hash)
        version = registration.version
        written.append(version_ref(version, name))
    if registration.created:
        announce_new_version(version, registered_by)
    create_markdown_artifact(
        key=f"dataset-version-{name}".replace("_", "-").lower(),
        markdown=(
            f"### Dataset version `{version.name}`\n\n"
            f"| field | value |\n|---|---|\n| dataset_hash | `{version.dataset_hash}` |\n"
            f"| DVC md5 | `{version.dvc_md5}` |\n| items | {version.num_items} |\n| shards | {version.num_shards} |\n"
            f"| tag | `{version.tag}` |\n| remote | `{version.remote_url}` |\n"
        ),
        description=f"{version.name} {version.dataset_hash[:16]}",
    )
    get_run_logger().info("%s %s (%s, %d items)", "registered" if registration.created else "already registered:",
                          version.tag, version.dvc_md5, version.num_items)
    return version


@task(name="registered-dataset-version", retries=2, retry_delay_seconds=10, retry_condition_fn=retry_if_transient)
def registered_version_task(key: str) -> DatasetVersion:
    """A registered version by tag, dataset hash, DVC md5 or unique prefix (``DatasetNotFoundError``
    naming the registry when there is none: not retried by waiting, see ``retry_if_transient``)."""
    version = DatasetRegistry.from_settings().find(key)
    get_run_logger().info("using registered %s (%d items, dataset_hash %s)", version.tag, version.num_items, version.dataset_hash)
    return version


# ------------------------------------------------------------------------- dataset locations


@task(name="derived-dataset-dir")
def derived_dataset_dir(kind: str, input_dataset_hash: str, config: BaseModel | None = None) -> str:
    """Where a step writes the version it derives from ``input_dataset_hash`` with ``config``.

    Named after both, so a rerun with the same inputs finds (and resumes) its own output and a
    changed config never collides with an earlier result.
    """
    config_part = hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:8] if config else "none"
    return str(PlatformSettings.load().path("datasets", kind) / f"{input_dataset_hash[:16]}-{config_part}")


def dataset_location(version: DatasetVersion) -> str:
    """Local directory of a registered dataset version (pulled from the remote if needed)."""
    return str(DatasetRegistry.from_settings().checkout(version.tag))  # the tag is unique; a hash may be shared by two names


@task(name="dataset-location", retries=2, retry_delay_seconds=10)
def dataset_location_task(version: DatasetVersion) -> str:
    return dataset_location(version)


# ------------------------------------------------------------------------- the SFT mixture
# (imported here, with its task, so that this section stays self-contained at the end of the module)
from tasks.data.sft_mixture import SftMixtureConfig, SftMixtureReport, build_sft_mixture, finished_mixture  # noqa: E402


@task(
    name="mix-sft-dataset",
    retries=1,
    retry_delay_seconds=30,
    timeout_seconds=6 * 3600,
)
def mix_sft_dataset_task(instruction_location: str, caption_location: str, output_dir: str,
                         config: SftMixtureConfig) -> SftMixtureReport:
    """Stage 3's training set: the gated instruction conversations plus caption conversations and text-only
    turns drawn from the gated captions (``tasks.data.sft_mixture``); counts go to a table artifact. An
    identical earlier mixture in ``output_dir`` (same parents, same config, shards intact) is reused."""
    logger = get_run_logger()
    instruction_hash = verify_dataset(instruction_location, check_shards=False).dataset_hash
    caption_hash = verify_dataset(caption_location, check_shards=False).dataset_hash

    def finished(folder: Path) -> bool:
        return finished_mixture(folder, instruction_hash, caption_hash, config) is not None

    # Produced privately and published with one rename (tasks.publish): two retrains mixing the same
    # inputs at once both end with the one verified mixture.
    produce_once(Path(output_dir), lambda private: build_sft_mixture(instruction_location, caption_location,
                                                                     private, config), finished)
    report = finished_mixture(output_dir, instruction_hash, caption_hash, config)
    if report is None:  # pragma: no cover - produce_once returns only once the folder verifies
        raise DatasetIntegrityError(f"{output_dir}: the SFT mixture did not verify after it was published")
    create_table_artifact(
        key="sft-mixture-counts", table=report.table_rows(),
        description=f"SFT mixture {report.dataset_hash[:16]} from instruction {instruction_hash[:16]} "
                    f"and captions {caption_hash[:16]}",
    )
    logger.info("SFT mixture: %d instruction + %d caption conversations + %d text-only = %d samples",
                report.num_instruction, report.num_caption_conversations, report.num_text_only, report.num_written)
    return report
