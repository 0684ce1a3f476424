"""``eve reproduce``: re-execute a registered version from its lineage manifest alone and compare every
output with its recorded hash (docs/reproduce.md).

Levels, in order (``--through`` stops after one): ``data`` fetches every recorded dataset by its hash
and checks every shard, then re-reads the raw sources and re-runs the ingests and curation with what
each version recorded of itself (sources, validation rules, shard size, curation config);
``captions`` re-runs the teacher captioning with the recorded backend identity; ``gates`` re-runs the
caption gate and the instruction gate with the recorded thresholds, then the SFT mixture with its
recorded config; ``stage-1`` ..
``stage-3`` re-train each recorded stage (the bootstrap ``stage-base-llm`` goes with ``stage-1``)
with its recorded config from the reproduced parent weights, on the local backend, into a fresh
folder under ``<home>/reproduce/``. Each output gets one report row: recorded hash, reproduced hash,
verdict. Nothing is skipped silently: what cannot be re-run says why.

Reproduction never reads the stage cache: the stage folders are new, so a stage is trained again,
not looked up. On CPU every level must be bit-identical; the GPU tolerance comparison is described
in docs/reproduce.md and is not implemented here.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from eve_model.identity import code_tree_revision, platform_commit, verify_weights, weights_sha256
from eve_model.shards import DatasetIntegrityError, read_manifest, verify_dataset
from eve_model.training.config import StageConfig, StageConfigError
from tasks.caption.config import CaptionConfig
from tasks.caption.provenance import BackendIdentity
from tasks.data.demo_source import DEMO_SUBDIR
from tasks.lineage.schema import DatasetRef, LineageManifest, QualityReportRef, StageRecord
from tasks.platform import REPO_ROOT, PlatformSettings

LEVELS = ("data", "captions", "gates", "stage-1", "stage-2", "stage-3", "all")
"""``--through`` choices, in run order (``all`` = every level)."""
CHECKED_OUT_ENV = "EVE_REPRODUCE_CHECKED_OUT"
"""Set on the re-executed command inside the recorded revision's work tree (no second hop)."""
DEMO_RAW_LOCATION = "data/ (data.dvc)"
"""How lineage names the bundled demo's raw source (``tasks.lineage.assemble.raw_source_refs``)."""
_STAGE_LEVEL = {"stage-base-llm": "stage-1", "stage-1": "stage-1", "stage-2": "stage-2", "stage-3": "stage-3"}


class Verdict(StrEnum):
    IDENTICAL = "identical"
    MISMATCH = "mismatch"
    WITHIN_TOLERANCE = "within tolerance"
    CANNOT_RERUN = "cannot re-run"


class ReproduceRow(BaseModel):
    """One artifact of the version, recorded next to reproduced."""

    level: str
    """The ``--through`` level it belongs to (``code`` for the revision row)."""

    artifact: str
    """What was compared (``dataset/captioned``, ``stage-1 weights``, ...)."""

    recorded: str | None
    """Hash (or revision) the lineage manifest records."""

    reproduced: str | None = None
    """Hash the re-execution produced; None when it could not run."""

    verdict: Verdict
    """identical / mismatch / within tolerance / cannot re-run."""

    detail: str = ""
    """How it was compared, or why it could not be re-run."""


class ReproduceReport(BaseModel):
    """Everything ``eve reproduce`` found for one version."""

    ref: str
    """``eve@vX``."""

    through: str
    """The last level re-executed."""

    output_dir: str
    """Fresh folder under ``<home>/reproduce/`` holding every reproduced artifact."""

    rows: list[ReproduceRow] = Field(default_factory=list)
    """One per artifact, in run order; the run stops after the first mismatch."""

    @property
    def first_mismatch(self) -> ReproduceRow | None:
        return next((row for row in self.rows if row.verdict == Verdict.MISMATCH), None)

    def table(self) -> list[dict[str, str]]:
        return [
            {"level": r.level, "artifact": r.artifact, "recorded": r.recorded or "-", "reproduced": r.reproduced or "-",
             "verdict": r.verdict.value, "detail": r.detail}
            for r in self.rows
        ]


class Mismatch(RuntimeError):
    """Raised internally to stop at the first mismatch (its row is already in the report)."""


def levels_through(through: str) -> list[str]:
    """The levels up to and including ``through``."""
    if through not in LEVELS:
        raise ValueError(f"--through {through!r}: expected one of {', '.join(LEVELS)}")
    order = list(LEVELS[:-1])
    return order if through == "all" else order[: order.index(through) + 1]


# ---------------------------------------------------------------------- the code revision


def code_revision_plan(recorded: str, current: str | None = None) -> tuple[str, str]:
    """(action, reason): ``here`` (this checkout is the recorded revision), ``worktree`` (check the
    recorded commit out in a separate work tree and re-execute there) or ``dirty`` (the recorded
    revision had uncommitted changes that no one can check out)."""
    current = current or platform_commit()
    if recorded.endswith("+dirty") or "+dirty" in recorded:
        return "dirty", (
            f"recorded revision {recorded} had uncommitted changes that were never recorded: it cannot be "
            f"checked out; re-running with this checkout ({current}) instead"
        )
    if recorded == current:
        return "here", f"this checkout is the recorded revision {recorded}"
    return "worktree", f"recorded revision {recorded} differs from this checkout ({current})"


def prepare_worktree(commit: str, settings: PlatformSettings, repo: Path = REPO_ROOT) -> Path:
    """A detached ``git worktree`` of ``commit`` under ``<home>/reproduce/code-<commit>`` (reused)."""
    target = settings.path("reproduce") / f"code-{commit[:12]}"
    if (target / ".git").exists():
        return target
    result = subprocess.run(
        ["git", "worktree", "add", "--detach", "--force", str(target), commit],
        cwd=repo, capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"cannot check out recorded revision {commit}: {result.stderr.strip()}")
    return target


# ---------------------------------------------------------------------- inputs by hash


def fetch_dataset(ref: DatasetRef) -> tuple[Path | None, str]:
    """(local directory holding dataset ``ref`` with every shard verified, how) or (None, why not).

    The recorded location first; when it no longer holds the version, the dataset registry pulls it
    from DVC by hash. A location whose shards fail their hashes raises ``DatasetIntegrityError``.
    """
    location = Path(ref.location)
    if (location / "manifest.json").exists():
        manifest = verify_dataset(location, expected_hash=None, check_shards=False)
        if manifest.dataset_hash == ref.dataset_hash:
            verify_dataset(location, expected_hash=ref.dataset_hash, check_shards=True)
            return location, f"recorded location {location}, every shard verified"
    from tasks.data.versioning import DatasetNotFoundError, DatasetRegistry

    try:
        pulled = DatasetRegistry.from_settings().checkout(ref.dataset_hash)
    except (DatasetNotFoundError, DatasetIntegrityError, OSError) as error:
        return None, f"not at {ref.location} and not pullable from the dataset registry: {error}"
    verify_dataset(pulled, expected_hash=ref.dataset_hash, check_shards=True)
    return pulled, f"pulled from DVC by hash into {pulled}, every shard verified"


# ---------------------------------------------------------------------- captions and gates


def caption_config_for(identity: BackendIdentity) -> tuple[CaptionConfig | None, str]:
    """The caption config that rebuilds the recorded backend, or (None, why it cannot)."""
    if identity.backend == "source":
        return CaptionConfig(backend="source", source_field=identity.model_id.removeprefix("source:")), ""
    decoding = identity.decoding
    options: dict[str, Any] = {
        key: decoding[key] for key in ("max_new_tokens", "temperature", "top_p", "seed") if key in decoding
    }
    if identity.prompt_template:
        options["prompt_template"] = identity.prompt_template
    if identity.backend == "hf":
        return CaptionConfig(backend="hf", model=identity.model_id, **options), ""
    if identity.backend == "openai":
        if not identity.endpoint:
            return None, "the external teacher's endpoint is not recorded"
        return CaptionConfig(backend="openai", model=identity.model_id, endpoint_url=identity.endpoint, **options), ""
    return None, f"unknown caption backend {identity.backend!r}"


# ---------------------------------------------------------------------- the run


class _Run:
    """State of one reproduction: the report, reproduced outputs by hash, where they go."""

    def __init__(self, manifest: LineageManifest, through: str, settings: PlatformSettings,
                 on_row: Callable[[ReproduceRow], None] | None) -> None:
        self.manifest = manifest
        self.settings = settings
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        base = settings.path("reproduce") / f"{manifest.model_name}-{manifest.version}-{stamp}"
        self.out_dir = next(base.with_name(f"{base.name}{suffix}") for suffix in ("", *(f"-{n}" for n in range(2, 10_000)))
                            if not base.with_name(f"{base.name}{suffix}").exists())
        self.out_dir.mkdir(parents=True)
        self.report = ReproduceReport(ref=manifest.ref, through=through, output_dir=str(self.out_dir))
        self.on_row = on_row
        self.datasets: dict[str, Path] = {}
        """dataset hash -> local directory (fetched or reproduced)."""
        self.weights: dict[str, Path] = {}
        """weights hash -> reproduced model directory."""
        self._demo_checked: bool | None = None
        """Whether the demo source matched its recorded md5 (None: not checked yet)."""

    def add(self, row: ReproduceRow) -> ReproduceRow:
        self.report.rows.append(row)
        if self.on_row is not None:
            self.on_row(row)
        if row.verdict == Verdict.MISMATCH:
            raise Mismatch(row.artifact)
        return row

    def compare(self, level: str, artifact: str, recorded: str | None, reproduced: str, detail: str) -> bool:
        verdict = Verdict.IDENTICAL if reproduced == recorded else Verdict.MISMATCH
        self.add(ReproduceRow(level=level, artifact=artifact, recorded=recorded, reproduced=reproduced,
                              verdict=verdict, detail=detail))
        return verdict == Verdict.IDENTICAL

    def cannot(self, level: str, artifact: str, recorded: str | None, reason: str) -> None:
        self.add(ReproduceRow(level=level, artifact=artifact, recorded=recorded, verdict=Verdict.CANNOT_RERUN,
                              detail=reason))

    def dataset_ref(self, role: str) -> DatasetRef | None:
        return next((d for d in self.manifest.datasets if d.role == role), None)

    # ------------------------------------------------------------------ levels

    def data(self) -> None:
        for ref in self.manifest.all_datasets():
            artifact = f"dataset/{ref.role}"
            if ref in self.manifest.raw_sources and not (Path(ref.location) / "manifest.json").exists():
                continue  # a raw source proper (files, not a dataset version): re-read by its ingest below
            try:
                path, how = fetch_dataset(ref)
            except DatasetIntegrityError as error:
                self.add(ReproduceRow(level="data", artifact=artifact, recorded=ref.dataset_hash,
                                      reproduced=None, verdict=Verdict.MISMATCH, detail=str(error)))
                continue
            if path is None:
                self.cannot("data", artifact, ref.dataset_hash, how)
                continue
            self.datasets[ref.dataset_hash] = path
            self.compare("data", artifact, ref.dataset_hash, ref.dataset_hash, f"fetched by hash: {how}")
        self.ingest("ingested")
        self.curation()
        self.ingest("sft")
        named = {row.artifact for row in self.report.rows}
        for raw in self.manifest.raw_sources:  # never skipped silently: a raw source no ingest re-read says why
            if f"{raw.role} source" not in named and not (Path(raw.location) / "manifest.json").exists():
                self.cannot("data", f"{raw.role} source", raw.dataset_hash,
                            raw.location if raw.dataset_hash.startswith("unrecorded-source-of-")
                            else f"no ingest in the lineage could re-read {raw.location}")

    def _raw_source_of(self, ref: DatasetRef) -> DatasetRef | None:
        return next((raw for raw in self.manifest.raw_sources if raw.dataset_hash in ref.derived_from), None)

    def _recorded_extra(self, ref: DatasetRef) -> dict[str, Any] | None:
        """The fetched version's own record of how it was made (its manifest's ``extra``)."""
        path = self.datasets.get(ref.dataset_hash)
        return read_manifest(path).extra if path is not None else None

    def demo_source(self, raw: DatasetRef) -> bool:
        """The bundled demo source (``data/``) in this checkout, regenerated if missing, compared by its DVC
        md5 with the recorded one (once per run); False when it differs."""
        if self._demo_checked is None:
            from tasks.data.demo_source import directory_md5, generate_demo_data

            data_root = REPO_ROOT / "data"
            regenerated = not (data_root / DEMO_SUBDIR / "train" / "captions.jsonl").exists()
            if regenerated:
                generate_demo_data(data_root)
            md5 = directory_md5(data_root)
            self._demo_checked = md5 == raw.dvc_md5
            self.compare("data", "raw source", raw.dvc_md5 or raw.dataset_hash, md5,
                         f"DVC md5 of {data_root}{' (regenerated by the demo generator)' if regenerated else ''}")
        return self._demo_checked

    def ingest(self, role: str) -> None:
        """Re-run the ingest of the ``role`` version (``ingested`` or ``sft``) from its recorded sources, validation
        rules and shard size into a fresh folder; its raw source's row compares what was read."""
        from tasks.data.sharding import ingest_items
        from tasks.data.sources import SourceError, SourceSpec, check_source
        from tasks.data.validate import ValidationConfig

        ref = self.dataset_ref(role)
        if ref is None:
            return
        artifact, raw = f"ingest: dataset/{role}", self._raw_source_of(ref)
        extra = self._recorded_extra(ref)
        if extra is None:
            self.cannot("data", artifact, ref.dataset_hash, "the version could not be fetched, so neither could the "
                        "sources and rules it records (see its data row)")
            return
        if not extra.get("sources") or extra.get("validation") is None:
            self.cannot("data", artifact, ref.dataset_hash, "the version does not record the sources and validation "
                        "rules it was ingested with (ingested before they were recorded, or built another way)")
            return
        demo = raw is not None and raw.location == DEMO_RAW_LOCATION
        if demo and not self.demo_source(raw):
            return
        specs = [SourceSpec.model_validate(_in_this_checkout(source) if demo else source) for source in extra["sources"]]
        shards = read_manifest(self.datasets[ref.dataset_hash]).shards
        out_dir = self.out_dir / role
        try:
            for spec in specs:
                check_source(spec)
            report = ingest_items(itertools.chain.from_iterable(spec.read() for spec in specs), out_dir,
                                  ValidationConfig.model_validate(extra["validation"]),
                                  max_items_per_shard=max(shard.num_items for shard in shards),
                                  extra={"sources": extra["sources"]})
        except (SourceError, OSError, ValueError) as error:
            where = "; ".join(spec.location for spec in specs)
            if raw is not None and not demo:
                self.cannot("data", f"{raw.role} source", raw.dataset_hash, f"cannot be read at {where}: {error}")
            self.cannot("data", artifact, ref.dataset_hash, f"its recorded sources cannot be read ({where}): {error}")
            return
        if raw is not None and not demo:
            self.raw_source(raw, specs, report.source_content_sha256)
        if self.compare("data", artifact, ref.dataset_hash, report.dataset_hash,
                        f"re-ingested {report.num_in} items with the recorded rules: {report.num_accepted} accepted, "
                        f"{report.num_quarantined} quarantined"):
            self.datasets[ref.dataset_hash] = out_dir

    def raw_source(self, raw: DatasetRef, specs: list, content_sha256: str) -> None:
        """A raw source's row: by DVC's md5 when DVC tracks it, else by the content hash the ingest computed."""
        artifact = f"{raw.role} source"
        if raw.dataset_hash.startswith("unrecorded-source-of-"):
            self.cannot("data", artifact, None, raw.location)
        elif raw.dvc_md5:
            from tasks.data.demo_source import directory_md5

            self.compare("data", artifact, raw.dvc_md5, directory_md5(Path(specs[0].location)),
                         f"DVC md5 of {specs[0].location}")
        else:
            self.compare("data", artifact, raw.dataset_hash, content_sha256,
                         f"content hash of every item read from {raw.location}")

    def curation(self) -> None:
        """Re-run curation on the reproduced ingested version with the config the curated version records."""
        from tasks.data.curate import CurationConfig, curate_dataset

        ref = self.dataset_ref("curated")
        if ref is None:
            return
        artifact = "curation: dataset/curated"
        extra = self._recorded_extra(ref)
        if extra is None or "curation" not in extra:
            self.cannot("data", artifact, ref.dataset_hash, "the curated version was not fetched or does not record its "
                        "curation config")
            return
        source = next((self.datasets[h] for h in ref.derived_from if h in self.datasets), None)
        if source is None:
            self.cannot("data", artifact, ref.dataset_hash, "its input could not be fetched (see the data rows)")
            return
        report = curate_dataset(source, self.out_dir / "curated", CurationConfig.model_validate(extra["curation"]))
        recorded_embedder = extra.get("embedder")
        note = (f"; the embedding differs: {report.embedder} now, {recorded_embedder} when recorded"
                if recorded_embedder and recorded_embedder != report.embedder else "")
        if self.compare("data", artifact, ref.dataset_hash, report.dataset_hash,
                        f"re-curated with the recorded config ({report.embedder}): kept {report.num_kept} of "
                        f"{report.num_in}{note}"):
            self.datasets[ref.dataset_hash] = self.out_dir / "curated"

    def captions(self) -> None:
        from tasks.caption.run import caption_dataset

        captioned = self.dataset_ref("captioned")
        caption = self.manifest.caption
        if captioned is None or caption is None:
            self.cannot("captions", "dataset/captioned", captioned.dataset_hash if captioned else None,
                        "the lineage records no caption run")
            return
        source = next((self.datasets.get(h) for h in captioned.derived_from if h in self.datasets), None)
        if source is None:
            self.cannot("captions", "dataset/captioned", captioned.dataset_hash,
                        "the captioned dataset's input could not be fetched (see the data rows)")
            return
        config, why_not = caption_config_for(caption.identity)
        if config is None:
            self.cannot("captions", "dataset/captioned", captioned.dataset_hash, why_not)
            return
        try:
            result = caption_dataset(source, self.out_dir / "captioned", config, settings=self.settings, progress=False)
        except Exception as error:  # an unreachable endpoint, a missing teacher: reported, never skipped
            self.cannot("captions", "dataset/captioned", captioned.dataset_hash,
                        f"teacher {caption.identity.backend}/{caption.identity.model_id} could not run: {error}")
            return
        if result.identity.fingerprint() != caption.identity.fingerprint():
            self.cannot("captions", "dataset/captioned", captioned.dataset_hash,
                        f"the teacher changed: its identity is {result.identity.fingerprint()[:16]} now, "
                        f"{caption.identity.fingerprint()[:16]} when recorded")
            return
        if self.compare("captions", "dataset/captioned", captioned.dataset_hash, result.output_dataset_hash,
                        f"re-captioned {result.num_samples} samples with {caption.identity.backend} "
                        f"({result.num_from_cache} from the teacher cache, {result.num_generated} generated)"):
            self.datasets[captioned.dataset_hash] = Path(result.output_location)

    def gates(self) -> None:
        """Re-run the caption gate (stages 1-2 data) with the recorded thresholds on the reproduced captions."""
        from tasks.quality.config import CaptionGateThresholds
        from tasks.quality.gate import gate_caption_dataset

        self._gate("filtered", self.manifest.quality, "the lineage records no caption gate",
                   lambda source, out, thresholds: gate_caption_dataset(
                       source, out, CaptionGateThresholds.model_validate(thresholds), compare_with_latest=False,
                       settings=self.settings))

    def instruction_gate(self) -> None:
        """Re-run the instruction-data gate (stage 3) with the recorded thresholds on the reproduced conversations."""
        from tasks.quality.config import InstructionGateThresholds
        from tasks.quality.gate import gate_instruction_dataset

        if self.dataset_ref("sft-filtered") is None:
            return  # no instruction data in this version
        self._gate("sft-filtered", self.manifest.instruction_quality,
                   "the lineage does not record the instruction gate (registered before it was recorded)",
                   lambda source, out, thresholds: gate_instruction_dataset(
                       source, out, InstructionGateThresholds.model_validate(thresholds), compare_with_latest=False,
                       settings=self.settings))

    def _gate(self, role: str, quality: QualityReportRef | None, unrecorded: str,
              run_gate: Callable[[Path, Path, dict[str, Any]], Any]) -> None:
        """One gate re-run: ``run_gate(input, output folder, recorded thresholds)`` -> ``GateResult``."""
        filtered, artifact = self.dataset_ref(role), f"dataset/{role}"
        recorded = filtered.dataset_hash if filtered else None
        if filtered is None or quality is None:
            self.cannot("gates", artifact, recorded, unrecorded)
            return
        if quality.thresholds is None:
            self.cannot("gates", artifact, recorded,
                        "the lineage does not record the gate's thresholds (registered before they were recorded)")
            return
        source = self.datasets.get(quality.dataset_hash)
        if source is None:
            self.cannot("gates", artifact, recorded, "the gated dataset could not be fetched")
            return
        result = run_gate(source, self.out_dir / role, quality.thresholds)
        if result.output_dataset_hash is None:
            self.add(ReproduceRow(level="gates", artifact=artifact, recorded=recorded, verdict=Verdict.MISMATCH,
                                  detail=f"the gate rejected the data on re-run: {'; '.join(result.reasons)}"))
            return
        if self.compare("gates", artifact, recorded, result.output_dataset_hash,
                        f"gate {quality.suite_name} {quality.suite_version} with the recorded thresholds: "
                        f"kept {result.counts.num_kept} of {result.counts.num_input}"):
            self.datasets[filtered.dataset_hash] = Path(result.output_location or "")

    def sft_mixture(self) -> None:
        """Re-mix stage 3's set from the reproduced gated conversations and captions with the recorded config."""
        from tasks.data.sft_mixture import SftMixtureConfig, build_sft_mixture

        ref = self.dataset_ref("sft-mixture")
        if ref is None:
            return
        extra = self._recorded_extra(ref)
        recorded = (extra or {}).get("sft_mixture") or {}
        if "config" not in recorded or "parents" not in recorded:
            self.cannot("gates", "dataset/sft-mixture", ref.dataset_hash,
                        "the mixture was not fetched or does not record its config and parents")
            return
        parents = {part: self.datasets.get(h) for part, h in recorded["parents"].items()}
        if None in parents.values():
            self.cannot("gates", "dataset/sft-mixture", ref.dataset_hash, "a parent could not be fetched or reproduced")
            return
        report = build_sft_mixture(parents["instruction"], parents["captions"], self.out_dir / "sft-mixture",
                                   SftMixtureConfig.model_validate(recorded["config"]))
        if self.compare("gates", "dataset/sft-mixture", ref.dataset_hash, report.dataset_hash,
                        f"re-mixed with the recorded config: {report.num_instruction} instruction + "
                        f"{report.num_caption_conversations} caption conversations + {report.num_text_only} text-only"):
            self.datasets[ref.dataset_hash] = self.out_dir / "sft-mixture"

    def stage(self, record: StageRecord) -> None:
        from tasks.stages import PlannedStage, TrainingParameters, run_stage, stage_cache_key

        level = _STAGE_LEVEL.get(record.name, record.name)
        artifact = f"{record.name} weights"
        try:
            config = StageConfig.model_validate(record.config)
        except (StageConfigError, ValueError) as error:
            self.add(ReproduceRow(level=level, artifact=f"{record.name} config", recorded=record.config_sha256,
                                  verdict=Verdict.MISMATCH, detail=f"the recorded config does not parse: {error}"))
            return
        if not self.compare(level, f"{record.name} config", record.config_sha256, config.content_hash(),
                            "content hash of the recorded stage config"):
            return
        dataset = self.datasets.get(record.input_dataset_hash)
        if dataset is None:
            ref = next((d for d in self.manifest.all_datasets() if d.dataset_hash == record.input_dataset_hash), None)
            dataset, why_not = fetch_dataset(ref) if ref else (None, "not in the lineage")
            if dataset is None:
                self.cannot(level, artifact, record.weights_sha256, f"input dataset {record.input_dataset_hash}: {why_not}")
                return
        init = None
        if record.parent_weights_sha256:
            init = self.weights.get(record.parent_weights_sha256)
            if init is None and config.init_checkpoint:
                try:
                    verify_weights(config.init_checkpoint, record.parent_weights_sha256)
                    init = Path(config.init_checkpoint)
                except (FileNotFoundError, ValueError, RuntimeError):
                    init = None
            if init is None:
                self.cannot(level, artifact, record.weights_sha256,
                            f"parent weights {record.parent_weights_sha256[:16]} were not reproduced and are not "
                            "at the recorded init checkpoint")
                return
        revision = code_tree_revision()
        placed = config.model_copy(update={
            "output_dir": str(self.out_dir / record.name),
            "dataset_location": str(dataset),
            "init_checkpoint": str(init) if init else None,
            "wandb_mode": "disabled",
            # A memo of the frozen teacher's features (content-keyed, left out of the config hash): this
            # home's own, never the recorded home's folder.
            "teacher_feature_cache_dir": (
                str(self.settings.teacher_feature_cache_dir) if config.teacher_feature_cache_dir else None
            ),
        })
        planned = PlannedStage(
            config=placed,
            cache_key=stage_cache_key(record.input_dataset_hash, record.parent_weights_sha256, placed.content_hash(),
                                      revision),
            parent_weights_sha256=record.parent_weights_sha256,
            code_revision=revision,
        )
        training = TrainingParameters(backend="local")
        ranks = _recorded_world_size(record)
        training.job = training.job.model_copy(update={"tasks_per_node": ranks, "log_dir": self.out_dir / "logs",
                                                       "env": {**training.job.env, "WANDB_MODE": "disabled"}})
        result = run_stage(planned, training, timeout_seconds=None)
        if self.compare(level, artifact, record.weights_sha256, result.weights_sha256,
                        f"re-trained on the local backend ({ranks} rank(s), {result.wall_seconds:.0f} s) from the "
                        f"recorded config into {planned.output_dir}"):
            self.weights[result.weights_sha256] = Path(result.model_dir)

    def registered_weights(self) -> None:
        weights = self.manifest.weights
        last = self.manifest.stages[-1] if self.manifest.stages else None
        if weights is None or last is None:
            return
        produced = self.weights.get(last.weights_sha256)
        if produced is None:
            self.cannot("stage-3", "registered weights", weights.sha256, "the last stage was not reproduced")
            return
        self.compare("stage-3", "registered weights", weights.sha256, weights_sha256(produced),
                     f"weights hash of the reproduced {last.name} output")


def _in_this_checkout(source: dict[str, Any]) -> dict[str, Any]:
    """A recorded demo source spec pointed at this checkout's ``data/demo`` (the recorded location is the
    checkout that ran the retrain; the bytes were checked against ``data.dvc`` first)."""
    parts = Path(str(source.get("location", ""))).parts
    starts = [i for i in range(len(parts) - 1) if parts[i] == "data" and parts[i + 1] == DEMO_SUBDIR]
    if not starts:
        return source
    return {**source, "location": str(REPO_ROOT.joinpath(*parts[starts[-1]:]))}


def _recorded_world_size(record: StageRecord) -> int:
    """Ranks the stage ran with: train_batch_size / (micro batch x accumulation) of its ds_config."""
    ds = record.deepspeed_config
    try:
        return max(1, int(ds["train_batch_size"]) // (int(ds["train_micro_batch_size_per_gpu"])
                                                      * int(ds["gradient_accumulation_steps"])))
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return 2


def reproduce_version(
    manifest: LineageManifest,
    through: str = "all",
    settings: PlatformSettings | None = None,
    on_row: Callable[[ReproduceRow], None] | None = None,
    current_revision: str | None = None,
) -> ReproduceReport:
    """Re-execute ``manifest``'s version up to ``through`` in this checkout; stops at the first mismatch.

    The caller decides about the code revision (``code_revision_plan``): this function records the
    revision row and runs here.
    """
    settings = settings or PlatformSettings.load()
    levels = levels_through(through)
    run = _Run(manifest, through, settings, on_row)
    current = current_revision or platform_commit()
    action, reason = code_revision_plan(manifest.code_revision, current)
    try:
        if action == "dirty":
            run.cannot("code", "platform code revision", manifest.code_revision, reason)
        else:
            run.compare("code", "platform code revision", manifest.code_revision, current, reason)
        run.data()
        if "captions" in levels:
            run.captions()
        if "gates" in levels:
            run.gates()
            run.instruction_gate()
            run.sft_mixture()
        for record in manifest.stages:
            if _STAGE_LEVEL.get(record.name, "stage-3") in levels:
                run.stage(record)
        if "stage-3" in levels:
            run.registered_weights()
    except Mismatch:
        pass
    return run.report


def format_row(row: ReproduceRow) -> str:
    """One aligned line: verdict, level, artifact, recorded and reproduced hash (20 characters), detail."""
    return (
        f"  {row.verdict.value.upper():<16} {row.level:<9} {row.artifact:<28} recorded {(row.recorded or '-')[:20]:<20} "
        f"reproduced {(row.reproduced or '-')[:20]:<20} {row.detail}"
    )


def format_report(report: ReproduceReport) -> str:
    """The report as aligned text, one row per artifact."""
    lines = [f"reproduce {report.ref} --through {report.through}  (outputs in {report.output_dir})"]
    lines += [format_row(row) for row in report.rows]
    mismatch = report.first_mismatch
    cannot = [row for row in report.rows if row.verdict == Verdict.CANNOT_RERUN]
    if mismatch is not None:
        lines.append(f"MISMATCH: {mismatch.artifact} of {report.ref} does not reproduce: {mismatch.detail}")
    else:
        identical = sum(row.verdict == Verdict.IDENTICAL for row in report.rows)
        lines.append(f"OK: {identical} artifact(s) identical, {len(cannot)} could not be re-run (reasons above)")
    return "\n".join(lines)


def publish_report(report: ReproduceReport) -> str | None:
    """Publish the report as a Prefect table artifact when a Prefect server is configured; returns its key."""
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        return None
    from prefect.artifacts import create_table_artifact

    key = "reproduce-" + "".join(c if c.isalnum() else "-" for c in report.ref.lower())
    create_table_artifact(key=key, table=report.table(), description=format_report(report).splitlines()[-1])
    return key


def running_in_checked_out_revision() -> bool:
    return bool(os.environ.get(CHECKED_OUT_ENV))


__all__ = [
    "CHECKED_OUT_ENV",
    "LEVELS",
    "ReproduceReport",
    "ReproduceRow",
    "Verdict",
    "code_revision_plan",
    "fetch_dataset",
    "format_report",
    "format_row",
    "levels_through",
    "prepare_worktree",
    "publish_report",
    "reproduce_version",
]
