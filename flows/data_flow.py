"""The data pipeline flow: raw sources -> validate (quarantine) -> shards -> curate -> DVC versions.

Run the embedded default: ``eve data demo`` (or ``python -m flows.data_flow``). Other sources:
``eve data ingest --kind image_folder --location s3://bucket/raw --name laion-part1``.

A source location that does not exist fails the run in seconds, and an ingest that accepts nothing
fails it with the counts; in both cases nothing is registered (``tasks.data.steps``).
"""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel, Field

from tasks.data.curate import CurationConfig, CurationReport, curate_dataset_task
from tasks.data.demo_source import DemoSources
from tasks.data.sharding import IngestReport
from tasks.data.sources import SourceSpec
from tasks.data.steps import ingest_sources_task, prepare_demo_source, register_dataset_version
from tasks.data.validate import ValidationConfig
from tasks.data.versioning import DatasetVersion


class DataFlowParams(BaseModel):
    """Parameters of one data pipeline run (Prefect draws them as a form)."""

    dataset_name: str = Field(default="demo", pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    """Name under which versions are registered: ``<name>-raw``, ``<name>-curated``, ``<name>-sft``."""

    use_demo_source: bool = True
    """Ingest the built-in demo source (regenerated from data.dvc if missing) instead of ``sources``."""

    sources: list[SourceSpec] = Field(default_factory=list)
    """Image-caption sources (ignored when ``use_demo_source``)."""

    sft_sources: list[SourceSpec] = Field(default_factory=list)
    """Conversation (stage 3) sources (ignored when ``use_demo_source``)."""

    validation: ValidationConfig = Field(default_factory=ValidationConfig.demo)
    """Acceptance rules for caption sources."""

    sft_validation: ValidationConfig = Field(
        default_factory=lambda: ValidationConfig.demo().model_copy(update={"require_caption": False})
    )
    """Acceptance rules for conversation sources (no caption needed)."""

    curate: bool = True
    """Run curation (resolution, near-duplicates, k-means sampling) after ingest."""

    curation: CurationConfig = Field(default_factory=CurationConfig)
    """Curation rules."""

    max_items_per_shard: int = Field(default=500, ge=1)
    """Samples per tar shard."""

    @classmethod
    def demo(cls) -> "DataFlowParams":
        """The embedded default: the bundled demo source, curated with the demo's own rules."""
        return cls(curation=CurationConfig.demo())

    @classmethod
    def paper(cls, name: str, sources: list[SourceSpec]) -> "DataFlowParams":
        """The paper's rules (>448 px, 50k clusters x 300) on the given sources."""
        return cls(
            dataset_name=name, use_demo_source=False, sources=sources, validation=ValidationConfig.paper(),
            curation=CurationConfig.paper(), max_items_per_shard=10_000,
        )


class DataFlowResult(BaseModel):
    """Everything later stages and lineage need from a data run."""

    ingest: IngestReport
    raw_version: DatasetVersion
    """Validated shards of the caption sources."""

    curation: CurationReport | None = None
    caption_version: DatasetVersion
    """The dataset the captioning stage reads (curated when curation ran)."""

    sft_ingest: IngestReport | None = None
    sft_version: DatasetVersion | None = None
    eval_questions_path: str | None = None


@flow(name="data-pipeline", log_prints=True)
def data_pipeline(params: DataFlowParams = DataFlowParams()) -> DataFlowResult:
    """Ingest and validate the sources, shard them, curate, and register every dataset version with DVC."""
    if params.use_demo_source:
        sources = prepare_demo_source()
    else:
        sources = DemoSources(captions=params.sources, sft=params.sft_sources)

    ingest = ingest_sources_task(
        sources.captions, params.validation, params.max_items_per_shard, label=f"{params.dataset_name}-raw"
    )
    raw_version = register_dataset_version(ingest.dataset_dir, f"{params.dataset_name}-raw", ingest.dataset_hash)
    curation = (
        curate_dataset_task(ingest.dataset_dir, ingest.dataset_hash, params.curation) if params.curate else None
    )
    caption_version = (
        register_dataset_version(curation.dataset_dir, f"{params.dataset_name}-curated", curation.dataset_hash)
        if curation
        else raw_version
    )

    sft_ingest = sft_version = None
    if sources.sft:
        sft_ingest = ingest_sources_task(
            sources.sft, params.sft_validation, params.max_items_per_shard, label=f"{params.dataset_name}-sft"
        )
        sft_version = register_dataset_version(sft_ingest.dataset_dir, f"{params.dataset_name}-sft", sft_ingest.dataset_hash)

    return DataFlowResult(
        ingest=ingest, raw_version=raw_version, curation=curation, caption_version=caption_version,
        sft_ingest=sft_ingest, sft_version=sft_version, eval_questions_path=sources.eval_questions_path,
    )


if __name__ == "__main__":
    print(data_pipeline(DataFlowParams.demo()).model_dump_json(indent=2))
