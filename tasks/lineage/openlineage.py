"""OpenLineage run events for every data step, gate, stage and promotion (docs/architecture.md, "Lineage").

The platform's own manifest (``tasks/lineage/schema.py``) is what the registry keeps; these events
say the same thing in the form lineage tools read (Marquez, DataHub, Atlan...). Each step emits
START, then COMPLETE or FAIL, for one run of one job, with its input and output datasets. Every
dataset carries its content identity: the standard ``version`` facet is the dataset hash (the
weights hash for a model), and the ``eve_content`` facet adds the DVC md5 and the item count.

Transport: a JSON-lines file under the platform home by default
(``<home>/openlineage/events.jsonl``); HTTP to a Marquez-compatible endpoint when
``EVE_OPENLINEAGE_URL`` is set (``EVE_OPENLINEAGE_API_KEY`` as bearer token, from the environment
only). Emitting never fails the step it describes: a transport error is logged and dropped.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attr
from pydantic import BaseModel, Field

from tasks.platform import PlatformSettings

NAMESPACE = "eve-platform"
"""Job namespace of every event."""
PRODUCER = "https://github.com/eve-platform/eve-platform/tree/main/tasks/lineage/openlineage.py"
"""Who wrote the events (an URI, as the spec asks)."""
_CONTENT_FACET_SCHEMA = "https://github.com/eve-platform/eve-platform/blob/main/docs/architecture.md#identities"
_log = logging.getLogger(__name__)


class LineageDataset(BaseModel):
    """A dataset (or a model) as a step read or wrote it."""

    name: str
    """Its location: a directory, ``s3://bucket/prefix``, or ``eve@v0.1.0`` for a registered model."""
    content_hash: str
    """Dataset hash, or the weights hash of a model."""
    kind: str = "dataset"
    """``dataset`` or ``model``."""
    dvc_md5: str | None = None
    """DVC's md5 of the directory where DVC tracks it."""
    num_items: int | None = None
    """Samples in it."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """More identity (e.g. the role in the retrain)."""


def _namespace_of(location: str) -> tuple[str, str]:
    if location.startswith("s3://"):
        bucket, _, key = location.removeprefix("s3://").partition("/")
        return f"s3://{bucket}", key or "/"
    if "@" in location and "/" not in location:
        return "eve-registry", location
    return "file", location


@attr.define
class _ContentFacet:
    """Custom dataset facet with the platform's content identity (attrs, as the client's facets are)."""

    content_hash: str
    kind: str
    dvc_md5: str | None = None
    num_items: int | None = None
    extra: dict = attr.field(factory=dict)
    _producer: str = attr.field(default=PRODUCER)
    _schemaURL: str = attr.field(default=_CONTENT_FACET_SCHEMA)


def _datasets(refs: list[LineageDataset], output: bool) -> list:
    from openlineage.client.event_v2 import InputDataset, OutputDataset
    from openlineage.client.generated.dataset_version_dataset import DatasetVersionDatasetFacet

    built = []
    for ref in refs:
        namespace, name = _namespace_of(ref.name)
        facets = {
            "version": DatasetVersionDatasetFacet(datasetVersion=ref.content_hash),
            "eve_content": _ContentFacet(content_hash=ref.content_hash, kind=ref.kind, dvc_md5=ref.dvc_md5,
                                         num_items=ref.num_items, extra=ref.extra),
        }
        cls = OutputDataset if output else InputDataset
        built.append(cls(namespace=namespace, name=name, facets=facets))
    return built


def _transport():
    from openlineage.client.transport.file import FileConfig, FileTransport
    from openlineage.client.transport.http import ApiKeyTokenProvider, HttpConfig, HttpTransport

    url = os.environ.get("EVE_OPENLINEAGE_URL")
    if url:
        api_key = os.environ.get("EVE_OPENLINEAGE_API_KEY")
        options: dict[str, Any] = {
            "url": url,
            # A lineage server that is down costs a step seconds, not minutes: two quick retries.
            "timeout": 5.0,
            "retry": {"total": 2, "backoff_factor": 0.2, "status_forcelist": [500, 502, 503, 504]},
        }
        if api_key:
            options["auth"] = ApiKeyTokenProvider({"apiKey": api_key})
        return HttpTransport(HttpConfig(**options))
    return FileTransport(FileConfig(log_file_path=str(events_path()), append=True))


def events_path(settings: PlatformSettings | None = None) -> Path:
    """The file transport's JSON-lines file."""
    return (settings or PlatformSettings.load()).path("openlineage") / "events.jsonl"


def _prefect_parent() -> tuple[str, str] | None:
    """(flow run id, flow name) of the enclosing Prefect flow run, when there is one."""
    try:
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
    except Exception:  # noqa: BLE001 - outside Prefect there is simply no parent
        return None
    if context is None or context.flow_run is None:
        return None
    return str(context.flow_run.id), context.flow.name if context.flow else "flow"


def build_event(
    event_type: str,
    job_name: str,
    run_id: str,
    inputs: list[LineageDataset],
    outputs: list[LineageDataset],
    error: str | None = None,
):
    """One OpenLineage ``RunEvent`` (the client's typed model)."""
    from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
    from openlineage.client.generated.error_message_run import ErrorMessageRunFacet
    from openlineage.client.generated.parent_run import Job as ParentJob
    from openlineage.client.generated.parent_run import ParentRunFacet
    from openlineage.client.generated.parent_run import Run as ParentRun

    run_facets: dict[str, Any] = {}
    parent = _prefect_parent()
    if parent is not None:
        run_facets["parent"] = ParentRunFacet(run=ParentRun(runId=parent[0]), job=ParentJob(namespace=NAMESPACE, name=parent[1]))
    if error:
        run_facets["errorMessage"] = ErrorMessageRunFacet(message=error[:2000], programmingLanguage="python")
    return RunEvent(
        eventType=RunState[event_type],
        eventTime=datetime.now(timezone.utc).isoformat(),
        run=Run(runId=run_id, facets=run_facets),
        job=Job(namespace=NAMESPACE, name=job_name),
        inputs=_datasets(inputs, output=False),
        outputs=_datasets(outputs, output=True),
        producer=PRODUCER,
    )


def emit(event) -> None:
    """Send one event; a transport failure is logged, never raised."""
    try:
        _transport().emit(event)
    except Exception as error:  # noqa: BLE001 - lineage export must not fail the step it describes
        _log.warning("OpenLineage event for %s not sent: %s", event.job.name, error)


@contextmanager
def lineage_run(job_name: str, inputs: list[LineageDataset], outputs: list[LineageDataset] | None = None) -> Iterator[list[LineageDataset]]:
    """START now; COMPLETE (with the outputs the block appended to the yielded list) or FAIL at exit."""
    run_id = str(uuid.uuid4())
    produced = list(outputs or [])
    emit(build_event("START", job_name, run_id, inputs, []))
    try:
        yield produced
    except BaseException as error:
        emit(build_event("FAIL", job_name, run_id, inputs, produced, error=f"{type(error).__name__}: {error}"))
        raise
    emit(build_event("COMPLETE", job_name, run_id, inputs, produced))


__all__ = ["LineageDataset", "NAMESPACE", "build_event", "emit", "events_path", "lineage_run"]
