"""Prefect tasks of the data pipeline (curation's task lives in ``tasks.data.curate``): thin wrappers that declare retries, caching and artifacts.

The logic lives in plain functions (``sources``, ``sharding``, ``versioning``, ``demo_source``,
``tasks.data.curate``); these wrappers add what only an orchestrated run needs: progress in the run log,
table artifacts with the counts, and content-based cache keys, so an unchanged source is not
ingested again and an unchanged dataset is not curated again.

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
from datetime import timedelta
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event
from pydantic import BaseModel

from eve_model.shards import DatasetIntegrityError, verify_dataset
from tasks.data.demo_source import DemoSources, demo_sources, ensure_demo_data
from tasks.data.sharding import REPORT_FILE, IngestReport, ingest_items
from tasks.data.sources import SourceSpec, check_source, is_transient_read_error, source_fingerprint
from tasks.data.validate import ValidationConfig
from tasks.data.versioning import DatasetRegistry, DatasetVersion
from tasks.platform import PlatformSettings
from tasks.publish import produce_once

# Bump when the ingest/curation logic changes what it writes: it is part of every cache key.
PIPELINE_CODE_VERSION = "data-2"
CACHE_EXPIRATION = timedelta(days=30)


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join((PIPELINE_CODE_VERSION, *parts)).encode()).hexdigest()


def ingest_cache_key(sources: list[SourceSpec], validation: ValidationConfig, max_items_per_shard: int) -> str:
    """Content key of an ingest: source fingerprints + rules + shard size + code version."""
    return _key(*(source_fingerprint(s) for s in sources), validation.model_dump_json(), str(max_items_per_shard))


def _staging_dir(kind: str, key: str) -> Path:
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
) -> IngestReport:
    """Ingest every source into one staged dataset; reuses an identical earlier ingest.

    Raises ``SourceNotFoundError`` before reading anything if a source location does not exist.
    The report may say that nothing was accepted: ``require_accepted`` turns that into the failure."""
    for source in sources:
        check_source(source)
    key = ingest_cache_key(sources, validation, max_items_per_shard)
    out_dir = _staging_dir("ingest", key)

    def produce(private: Path) -> None:
        items = itertools.chain.from_iterable(source.read() for source in sources)
        ingest_items(
            items, private, validation, max_items_per_shard=max_items_per_shard,
            extra={"sources": [s.model_dump() for s in sources]}, progress=progress, published_dir=out_dir,
        )

    produce_once(out_dir, produce, _reusable)  # private folder, then one atomic rename (tasks.publish)
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
    """Read, validate and shard the sources; counts go to a table artifact, bad items to quarantine.

    Fails without retrying when a source does not exist or nothing is accepted."""
    logger = get_run_logger()
    report = ingest_sources(
        sources, validation, max_items_per_shard,
        progress=lambda n, ok, bad: logger.info("ingest: %d items read, %d accepted, %d quarantined", n, ok, bad),
    )
    create_table_artifact(
        key=f"ingest-counts-{label}".replace("_", "-").lower(),
        table=report.table_rows(),
        description=f"Ingest of {len(sources)} source(s) -> dataset {report.dataset_hash[:16]}; "
        f"quarantine list: {report.quarantine_path}",
    )
    return require_accepted(report)


@task(name="register-dataset-version", retries=1, retry_delay_seconds=30, timeout_seconds=3 * 3600)
def register_dataset_version(dataset_dir: str, name: str, dataset_hash: str | None = None) -> DatasetVersion:
    """Push the dataset to the DVC remote (with backoff) and tag it in the dataset registry.

    Given ``dataset_hash``, an already registered version is returned even if ``dataset_dir`` is gone.
    """
    version = DatasetRegistry.from_settings().register(dataset_dir, name, dataset_hash=dataset_hash)
    # prefect.yaml's retrain-on-new-data deployment triggers on this event for ``*-raw`` versions.
    emit_event(
        event="eve.dataset.registered",
        resource={"prefect.resource.id": f"eve.dataset.{name}", "eve.dataset.hash": version.dataset_hash},
        payload={"tag": version.tag, "num_items": version.num_items, "dvc_md5": version.dvc_md5},
    )
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
    get_run_logger().info("registered %s (%s, %d items)", version.tag, version.dvc_md5, version.num_items)
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
