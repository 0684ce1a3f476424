"""The data pipeline flow: raw sources -> validate (quarantine) -> shards -> curate -> DVC versions.

Run the embedded default: ``eve data demo`` (or ``python -m flows.data_flow``). Your own sources:
``eve data ingest --location s3://bucket/raw --name laion-part1`` (the layout is recognised:
docs/own-data.md). Or start from a registered raw version (``DataFlowParams.dataset``) instead of
ingesting: curation and everything after it run on that version.

A source location that does not exist fails the run in seconds, and an ingest that accepts nothing
fails it with the counts; in both cases nothing is registered (``tasks.data.steps``).

Registration announces each new raw version with the ``eve.dataset.registered`` event, which the
``retrain-on-new-data`` deployment triggers on; versions a retrain registers itself are labelled
``registered_by: retrain`` and never trigger one (``register_dataset_version``).
"""

from __future__ import annotations

from typing import Literal

from prefect import flow
from pydantic import BaseModel, Field, model_validator

from tasks.data.curate import CurationConfig, CurationReport, curate_dataset_task
from tasks.data.demo_source import DemoSources
from tasks.data.executor import DataExecutorConfig, dask_task_runner, flow_environment_kept
from tasks.data.sharding import IngestReport
from tasks.data.sources import SourceSpec
from tasks.data.steps import (
    RegisteredBy,
    dataset_location_task,
    ingest_on_cluster,
    ingest_sources_task,
    prepare_demo_source,
    register_dataset_version,
    registered_version_task,
)
from tasks.data.validate import ValidationConfig
from tasks.data.versioning import TAG_PREFIX, DatasetVersion

RAW_SUFFIX = "-raw"


class DataFlowParams(BaseModel):
    """Parameters of one data pipeline run (Prefect draws them as a form). The defaults are production
    defaults for your own data; ``demo()`` is the embedded demo's recipe, ``paper()`` EVE's."""

    dataset_name: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    """Name under which versions are registered: ``<name>-raw``, ``<name>-curated``, ``<name>-sft``...
    Required, except with the demo source (``demo``) or a ``dataset`` tag (its name without ``-raw``)."""

    use_demo_source: bool = False
    """Ingest the built-in demo source (regenerated from data.dvc if missing) instead of your sources."""

    sources: list[SourceSpec] = Field(default_factory=list)
    """Image-caption sources (stages 1-2): folders, files or s3:// prefixes, layout recognised."""

    dataset: str | None = None
    """A registered raw version to use instead of ingesting ``sources``: its tag
    (``dataset/NAME-raw/HASH16``), dataset hash, DVC md5 or a unique prefix (``eve data versions``).
    The retrain-on-new-data deployment sets it to the version that arrived."""

    sft_sources: list[SourceSpec] = Field(default_factory=list)
    """Conversation (stage 3) sources: LLaVA-style records (image + conversations)."""

    sft_dataset: str | None = None
    """A registered conversation version to use instead of ingesting ``sft_sources``."""

    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    """Acceptance rules for caption sources."""

    sft_validation: ValidationConfig = Field(default_factory=lambda: ValidationConfig(require_caption=False))
    """Acceptance rules for conversation sources (no caption needed)."""

    curate: bool = True
    """Run curation (resolution, near-duplicates, diversity sampling) after ingest."""

    curation: CurationConfig = Field(default_factory=CurationConfig)
    """Curation rules."""

    max_items_per_shard: int = Field(default=500, ge=1)
    """Samples per tar shard."""

    executor: DataExecutorConfig = Field(default_factory=DataExecutorConfig)
    """Where the ingests run: ``kind: local`` (default) in this flow's process; ``dask-local``,
    ``dask-slurm`` or ``dask-kubernetes`` shard-parallel on a Dask cluster, one task run per shard
    (docs/data-at-scale.md). The datasets are the same, byte for byte, whatever the executor."""

    @model_validator(mode="after")
    def _one_input_each(self) -> "DataFlowParams":
        if self.use_demo_source and (self.sources or self.dataset or self.sft_sources or self.sft_dataset):
            raise ValueError("use_demo_source is true, which would ignore the given sources/dataset: set "
                             "use_demo_source: false to ingest yours")
        if not self.use_demo_source:
            if self.sources and self.dataset:
                raise ValueError("give either sources or dataset (a registered raw version), not both")
            if self.sft_sources and self.sft_dataset:
                raise ValueError("give either sft_sources or sft_dataset (a registered version), not both")
            if not self.sources and not self.dataset:
                raise ValueError("sources: no source and no dataset given; name at least one source "
                                 "(location: a folder, file or s3:// prefix) or a registered raw version (dataset)")
        if self.dataset_name is None:
            derived = "demo" if self.use_demo_source else dataset_name_of(self.dataset)
            if derived is None:
                raise ValueError("dataset_name: required (versions are registered as NAME-raw, NAME-curated, ...)")
            self.dataset_name = derived
        return self

    @classmethod
    def demo(cls) -> "DataFlowParams":
        """The embedded default: the bundled demo source, validated and curated with the demo's own rules."""
        return cls(
            dataset_name="demo", use_demo_source=True, validation=ValidationConfig.demo(),
            sft_validation=ValidationConfig.demo().model_copy(update={"require_caption": False}),
            curation=CurationConfig.demo(),
        )

    @classmethod
    def paper(cls, name: str, sources: list[SourceSpec], sft_sources: list[SourceSpec] | None = None) -> "DataFlowParams":
        """The paper's rules (>448 px, 50k clusters x 300) on the given sources."""
        return cls(
            dataset_name=name, sources=sources, sft_sources=sft_sources or [], validation=ValidationConfig.paper(),
            curation=CurationConfig.paper(), max_items_per_shard=10_000,
        )


def dataset_name_of(tag: str | None) -> str | None:
    """``photos`` for the tag ``dataset/photos-raw/<hash16>``; None for anything that is not a raw tag."""
    if not tag or not tag.startswith(f"{TAG_PREFIX}/"):
        return None
    name = tag.split("/")[1] if tag.count("/") == 2 else ""
    return name.removesuffix(RAW_SUFFIX) if name.endswith(RAW_SUFFIX) and len(name) > len(RAW_SUFFIX) else None


class DataFlowResult(BaseModel):
    """Everything later stages and lineage need from a data run."""

    ingest: IngestReport | None = None
    """The ingest of the caption sources; None when a registered version was used (``dataset``)."""

    raw_version: DatasetVersion
    """Validated shards of the caption sources."""

    curation: CurationReport | None = None
    caption_version: DatasetVersion
    """The dataset the captioning stage reads (curated when curation ran)."""

    sft_ingest: IngestReport | None = None
    sft_version: DatasetVersion | None = None
    eval_questions_path: str | None = None


@flow(name="ingest-shards", log_prints=True)
def ingest_shards_flow(sources: list[SourceSpec], validation: ValidationConfig, max_items_per_shard: int,
                       executor: DataExecutorConfig, label: str) -> IngestReport:
    """One ingest shard-parallel: run with the executor's ``DaskTaskRunner`` (``run_ingest``), each shard is an
    ``ingest-shard-<k>`` task run on a Dask worker; the merge runs here (``tasks.data.shard_ingest``)."""
    return ingest_on_cluster(sources, validation, max_items_per_shard, executor, label=label)


def run_ingest(sources: list[SourceSpec], validation: ValidationConfig, params: DataFlowParams, label: str) -> IngestReport:
    """The ingest of ``sources`` on the executor ``params`` name: the in-process task, or the
    ``ingest-shards`` subflow on a Dask cluster started (and stopped) for it."""
    if params.executor.is_local:
        return ingest_sources_task(sources, validation, params.max_items_per_shard, label=label)
    on_cluster = ingest_shards_flow.with_options(task_runner=dask_task_runner(params.executor))
    with flow_environment_kept():
        return on_cluster(sources, validation, params.max_items_per_shard, params.executor, label)


@flow(name="data-pipeline", log_prints=True)
def data_pipeline(params: DataFlowParams = DataFlowParams.demo(), registered_by: RegisteredBy = "ingest") -> DataFlowResult:
    """Ingest and validate the sources (or take a registered version), shard them, curate, and register
    every dataset version with DVC. ``registered_by``: ``ingest`` announces new raw versions to the
    new-data trigger; a retrain passes ``retrain`` so that its own versions never trigger another."""
    if params.use_demo_source:
        sources = prepare_demo_source()
    else:
        sources = DemoSources(captions=params.sources, sft=params.sft_sources)
    name = params.dataset_name

    ingest = None
    if params.dataset:
        raw_version = registered_version_task(params.dataset)
        raw_dir = dataset_location_task(raw_version)
    else:
        ingest = run_ingest(sources.captions, params.validation, params, label=f"{name}-raw")
        raw_version = register_dataset_version(ingest.dataset_dir, f"{name}-raw", ingest.dataset_hash, registered_by=registered_by)
        raw_dir = ingest.dataset_dir
    curation = curate_dataset_task(raw_dir, raw_version.dataset_hash, params.curation) if params.curate else None
    caption_version = (
        register_dataset_version(curation.dataset_dir, f"{name}-curated", curation.dataset_hash, registered_by=registered_by)
        if curation
        else raw_version
    )

    sft_ingest = sft_version = None
    if params.sft_dataset:
        sft_version = registered_version_task(params.sft_dataset)
    elif sources.sft:
        sft_ingest = run_ingest(sources.sft, params.sft_validation, params, label=f"{name}-sft")
        sft_version = register_dataset_version(sft_ingest.dataset_dir, f"{name}-sft", sft_ingest.dataset_hash,
                                               registered_by=registered_by)

    return DataFlowResult(
        ingest=ingest, raw_version=raw_version, curation=curation, caption_version=caption_version,
        sft_ingest=sft_ingest, sft_version=sft_version, eval_questions_path=sources.eval_questions_path,
    )


if __name__ == "__main__":
    print(data_pipeline(DataFlowParams.demo()).model_dump_json(indent=2))
