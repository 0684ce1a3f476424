"""Curation: resolution filter, near-duplicate removal and k-means diversity sampling (docs/model.md, "Data curation").

The paper keeps LAION images above 448x448, embeds them with EVA-CLIP, runs k-means with 50,000
clusters and keeps the 300 images nearest each centroid. Here the same steps run on any embedding
function ``embed_fn(list[PIL.Image]) -> (N, D) array``; the default is the platform's vision teacher
(``eve_model.teachers``, EfficientNet-Lite0 in the embedded default, CLIP in production), with a
colour-thumbnail embedding as a clearly reported fallback when the teacher cannot be built.

Curation scales with the data: the cluster count and the per-cluster quota are derived from the
number of images left after the filters and a target size, keeping the paper's shape (50,000
clusters x 300 = 15 M, i.e. clusters / quota = 500 / 3) at any scale: quota = round(sqrt(target x
300 / 50,000)), clusters = ceil(target / quota). At the paper's target this gives exactly 50,000 x
300; for a target of 10,000 it gives 1,250 x 8. The default target is every image that passes the
filters (a team's own data is already chosen), so k-means only runs when a smaller target is set,
and then only is the embedding computed (``CurationConfig.embeds_images``).
Near duplicates are found by perceptual hash (``tasks.data.image_near_duplicates``: the method and
thresholds were chosen by measuring precision on a real image set), or by the embedding's cosine
when asked. Every report lists the rules in force (``CurationReport.rules_in_force``).

Every input sample ends up either kept or dropped with one reason (``resolution``,
``near_duplicate``, ``cluster_overflow``); ``num_in == num_kept + sum(dropped)`` always holds and
``curation_log.jsonl`` next to the output lists each dropped key with its reason.

Two passes over the input: embeddings first (only keys, sizes and vectors stay in memory), then the
kept samples are copied, in input order, into new shards.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Literal

import numpy as np
from prefect import task
from pydantic import BaseModel, Field

from eve_model.shards import iter_samples, read_manifest, write_subset
from tasks.data.image_near_duplicates import (
    ImageFingerprints,
    ImageNearDuplicateRule,
    colour_thumbnail,
    find_near_duplicate_images,
)

logger = logging.getLogger(__name__)

EmbedFn = Callable[[list], np.ndarray]
CURATION_LOG = "curation_log.jsonl"


PAPER_NUM_CLUSTERS = 50_000
"""EVE's LAION curation: k-means with 50,000 clusters ..."""
PAPER_KEEP_PER_CLUSTER = 300
"""... keeping the 300 images nearest each centroid (15 M images)."""


class CurationConfig(BaseModel):
    """Curation rules. The defaults are production defaults for a team's own data; ``demo()`` is the
    embedded demo's recipe (600 scenes -> at most 50 x 10) and ``paper()`` the EVE-7B scale."""

    min_width_pixels: int = Field(default=32, ge=1)
    """Resolution filter: drop narrower images (paper: >448). Below 32 px an image is less than 2 x 2
    patches of 14 px; this floor drops 3 % of the Tux Paint stamps, the demo's 64 px 17 %."""

    min_height_pixels: int = Field(default=32, ge=1)
    """Resolution filter: drop shorter images."""

    near_duplicate_method: Literal["perceptual-hash", "embedding", "none"] = "perceptual-hash"
    """How near duplicates are found: perceptual hash (calibrated on a real image set, see
    docs/data-quality.md), the embedding's cosine (``near_duplicate_cosine``), or not at all."""

    near_duplicate_rule: ImageNearDuplicateRule = Field(default_factory=ImageNearDuplicateRule)
    """Thresholds of the perceptual-hash rule."""

    near_duplicate_cosine: float = Field(default=0.95, gt=0.0, le=1.0)
    """Embedding method only: two images at or above this cosine similarity are near duplicates."""

    target_num_items: int | None = Field(default=None, ge=1)
    """Images to keep; None: ``target_fraction`` of the images left after the filters."""

    target_fraction: float = Field(default=1.0, gt=0.0, le=1.0)
    """Share of the filtered images to keep when ``target_num_items`` is None (1.0: all of them)."""

    num_clusters: int | None = Field(default=None, ge=1)
    """k of k-means; None: derived from the target in the paper's shape (module docstring).
    Capped at the number of remaining images."""

    keep_per_cluster: int | None = Field(default=None, ge=1)
    """Keep at most this many images nearest each centroid; None: derived like ``num_clusters``."""

    kmeans_iterations: int = Field(default=20, ge=1)
    """Lloyd iterations of k-means."""

    seed: int = 1234
    """Seed of k-means initialisation."""

    embed_batch_size: int = Field(default=32, ge=1)
    """Images per embedding call."""

    embedder: Literal["teacher", "thumbnail"] = "teacher"
    """Embedding used when the caller passes none: the platform's vision teacher (falls back to the
    thumbnail, reported as such, when it cannot be built) or the fast 8x8 colour thumbnail."""

    embed_num_threads: int | None = Field(default=1, ge=1)
    """torch intra-op threads while embedding (None: leave torch's setting). One thread per process
    avoids the oversubscription that made 2 threads ~5x slower on a shared 2-core machine."""

    cache_teacher_features: bool = False
    """Keep the teacher's patch features of every embedded image under the platform home
    (``eve_model.teacher_cache``), so training stages that cache too never run the teacher on
    them again. About 250 KB per image with EfficientNet-Lite0: on in ``demo()`` only (production
    teachers' features of a pre-training set are terabytes)."""

    def embeds_images(self) -> bool:
        """Whether curation needs the embedding at all: for k-means sampling (a target below every
        image, or clusters set), for the embedding near-duplicate method, or to cache teacher features.
        With the production defaults it does not, and curation never runs the teacher."""
        return (self.near_duplicate_method == "embedding" or self.cache_teacher_features
                or self.num_clusters is not None or self.keep_per_cluster is not None
                or self.target_num_items is not None or self.target_fraction < 1.0)

    @classmethod
    def demo(cls) -> "CurationConfig":
        """The embedded demo's recipe, unchanged: 64 px floor, teacher cosine 0.95, 50 clusters x 10,
        teacher features cached for the training stages."""
        return cls(min_width_pixels=64, min_height_pixels=64, near_duplicate_method="embedding",
                   near_duplicate_cosine=0.95, num_clusters=50, keep_per_cluster=10, cache_teacher_features=True)

    @classmethod
    def paper(cls) -> "CurationConfig":
        """The paper's rules: >448 px and a 15 M target, which derives its 50,000 clusters x 300."""
        return cls(min_width_pixels=449, min_height_pixels=449,
                   target_num_items=PAPER_NUM_CLUSTERS * PAPER_KEEP_PER_CLUSTER)


class ClusterPlan(BaseModel):
    """How many images the diversity sampling keeps, and in how many clusters of what quota."""

    num_candidates: int
    """Images left after the resolution and near-duplicate filters."""
    target_num_items: int
    """Images to keep (at most ``num_candidates``)."""
    num_clusters: int
    """k of k-means (0: no sampling needed)."""
    keep_per_cluster: int
    """Images kept nearest each centroid (0: no sampling needed)."""
    rule: str
    """Where the numbers came from, in words."""


def plan_clusters(num_candidates: int, config: CurationConfig) -> ClusterPlan:
    """The target and the (clusters, quota) pair for ``num_candidates`` images (module docstring)."""
    if config.target_num_items is not None:
        wanted, source = config.target_num_items, f"target {config.target_num_items:,} images"
    else:
        wanted = math.ceil(config.target_fraction * num_candidates)
        source = f"target {config.target_fraction:g} of {num_candidates:,} = {wanted:,} images"
    target = min(wanted, num_candidates)
    explicit = config.num_clusters is not None or config.keep_per_cluster is not None
    if num_candidates == 0 or (target >= num_candidates and not explicit):
        return ClusterPlan(num_candidates=num_candidates, target_num_items=target, num_clusters=0,
                           keep_per_cluster=0, rule=f"{source}: every image kept, no k-means sampling")
    quota = config.keep_per_cluster or max(1, round(math.sqrt(target * PAPER_KEEP_PER_CLUSTER / PAPER_NUM_CLUSTERS)))
    clusters = min(config.num_clusters or math.ceil(target / quota), num_candidates)
    how = "as configured" if config.num_clusters and config.keep_per_cluster else (
        f"paper shape ({PAPER_NUM_CLUSTERS:,} x {PAPER_KEEP_PER_CLUSTER} scaled: quota = round(sqrt(target x "
        f"{PAPER_KEEP_PER_CLUSTER} / {PAPER_NUM_CLUSTERS:,})), clusters = ceil(target / quota))")
    return ClusterPlan(num_candidates=num_candidates, target_num_items=target, num_clusters=clusters,
                       keep_per_cluster=quota, rule=f"{source}; {clusters:,} clusters x {quota} nearest, {how}")


def rules_in_force(config: CurationConfig, plan: ClusterPlan | None, embedder: str) -> list[str]:
    """One line per rule, as the summaries (CLI, Prefect artifact, report) state them."""
    if config.near_duplicate_method == "perceptual-hash":
        near = config.near_duplicate_rule.describe()
    elif config.near_duplicate_method == "embedding":
        near = f"{embedder} cosine >= {config.near_duplicate_cosine}"
    else:
        near = "off"
    return [
        f"resolution: keep images at least {config.min_width_pixels}x{config.min_height_pixels} px",
        f"near duplicates: {near}",
        "diversity sampling: " + (
            "not reached (no image left)" if plan is None
            else plan.rule if plan.num_clusters == 0 else f"{plan.rule}; k-means on {embedder} embeddings"),
    ]


class CurationReport(BaseModel):
    """Counts of one curation run; ``num_in == num_kept + sum(dropped_by_reason.values())``."""

    input_dataset_hash: str
    dataset_dir: str
    """The curated dataset (manifest.json + shards/)."""

    dataset_hash: str
    num_in: int
    num_kept: int
    dropped_by_reason: dict[str, int] = Field(default_factory=dict)
    num_clusters_used: int = 0
    cluster_plan: ClusterPlan | None = None
    """The target, clusters and quota of the diversity sampling, and where they came from."""
    rules_in_force: list[str] = Field(default_factory=list)
    """The rules this curation applied, one line each (stated in every summary)."""
    embedder: str = ""
    """Which embedding produced the clusters (teacher name, or the fallback)."""

    curation_log_path: str = ""
    elapsed_seconds: float = 0.0

    @property
    def reconciles(self) -> bool:
        return self.num_in == self.num_kept + sum(self.dropped_by_reason.values())

    def table_rows(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = [{"outcome": "in", "count": self.num_in}, {"outcome": "kept", "count": self.num_kept}]
        rows += [{"outcome": f"dropped: {reason}", "count": n} for reason, n in sorted(self.dropped_by_reason.items())]
        rows += [{"outcome": f"rule: {rule}", "count": ""} for rule in self.rules_in_force]
        return rows

    def summary_markdown(self) -> str:
        """Counts that reconcile and the rules in force (the Prefect artifact)."""
        lines = [f"# Curation of `{self.input_dataset_hash[:16]}` -> `{self.dataset_hash[:16]}`", "",
                 f"{self.num_in} in = {self.num_kept} kept + {sum(self.dropped_by_reason.values())} dropped",
                 "", "| dropped for | count |", "|---|---|"]
        lines += [f"| {reason} | {count} |" for reason, count in sorted(self.dropped_by_reason.items())]
        lines += ["", "## Rules in force", ""] + [f"- {rule}" for rule in self.rules_in_force]
        lines += ["", f"Every dropped key with its reason: `{self.curation_log_path}`"]
        return "\n".join(lines) + "\n"


# --- embeddings -----------------------------------------------------------------------------------


def thumbnail_embed(images: list) -> np.ndarray:
    """Fallback embedding: a 8x8 RGB thumbnail (transparency on white), mean-centred and
    L2-normalised. (N,) images -> (N, 192)."""
    return np.stack([colour_thumbnail(image) for image in images]).astype(np.float32)


def teacher_embed_fn(num_threads: int | None = 1, feature_cache_dir: str | Path | None = None) -> tuple[EmbedFn, str]:
    """The platform's vision teacher as an embedding function, and its name; ``feature_cache_dir``
    memoises its features (the training stages then find every curated image there)."""
    import torch

    from eve_model.configuration_eve import EveConfig
    from eve_model.processing_eve import EveImageProcessor
    from eve_model.teachers import build_teacher

    config = EveConfig.tiny()
    teacher = build_teacher(config, feature_cache_dir)
    processor = EveImageProcessor.from_eve_config(config)

    def embed(images: list) -> np.ndarray:
        previous_threads = torch.get_num_threads()
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        try:
            pixels = processor(images)["teacher_pixel_values"]
            return teacher.embed(pixels).float().numpy()
        finally:
            torch.set_num_threads(previous_threads)

    return embed, f"teacher:{config.teacher_kind}"


def default_embed_fn(num_threads: int | None = 1, cache_teacher_features: bool = False) -> tuple[EmbedFn, str]:
    """The teacher (its features memoised under the platform home if asked) when it can be built
    here, else the thumbnail fallback (named so in the report)."""
    from tasks.platform import PlatformSettings

    cache_dir = PlatformSettings.load().teacher_feature_cache_dir if cache_teacher_features else None
    try:
        return teacher_embed_fn(num_threads, cache_dir)
    except Exception as exc:  # missing weights/package must not stop curation, but must be visible
        logger.warning("vision teacher unavailable (%s: %s); curating with thumbnail embeddings", exc.__class__.__name__, exc)
        return thumbnail_embed, "thumbnail-8x8 (teacher unavailable)"


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-8)


# --- the three filters ----------------------------------------------------------------------------


def find_near_duplicates(embeddings: np.ndarray, threshold: float) -> dict[int, tuple[int, float]]:
    """Greedy in input order: index -> (index of the earlier kept image it duplicates, cosine).

    ``embeddings`` (N, D) L2-normalised. An image is compared only with images kept so far, so of a
    group of duplicates the first one stays.
    """
    import faiss

    kept_index = faiss.IndexFlatIP(embeddings.shape[1])
    kept_ids: list[int] = []
    duplicates: dict[int, tuple[int, float]] = {}
    for row in range(embeddings.shape[0]):
        vector = embeddings[row : row + 1]
        if kept_index.ntotal:
            similarity, position = kept_index.search(vector, 1)
            if similarity[0, 0] >= threshold:
                duplicates[row] = (kept_ids[int(position[0, 0])], float(similarity[0, 0]))
                continue
        kept_index.add(vector)
        kept_ids.append(row)
    return duplicates


def select_by_clusters(
    embeddings: np.ndarray, plan: ClusterPlan, config: CurationConfig
) -> tuple[np.ndarray, np.ndarray, int]:
    """k-means, then the nearest images per centroid, at most ``plan.target_num_items`` in all.
    (N, D) -> (keep mask (N,), cluster id (N,), k)."""
    import faiss

    count, dim = embeddings.shape
    if plan.num_clusters == 0:
        return np.ones(count, dtype=bool), np.zeros(count, dtype=np.int64), 0
    k = min(plan.num_clusters, count)
    if k == count:
        assignment = np.arange(count)
        distances = np.zeros(count, dtype=np.float32)
    else:
        kmeans = faiss.Kmeans(dim, k, niter=config.kmeans_iterations, seed=config.seed, verbose=False)
        kmeans.train(embeddings)
        squared, labels = kmeans.index.search(embeddings, 1)
        assignment, distances = labels[:, 0], squared[:, 0]
    # rank of each image within its cluster, nearest first (ties broken by input order)
    order = np.lexsort((np.arange(count), distances, assignment))
    rank = np.empty(count, dtype=np.int64)
    previous_cluster, position = -1, 0
    for index in order:
        position = position + 1 if assignment[index] == previous_cluster else 0
        previous_cluster = assignment[index]
        rank[index] = position
    keep = rank < plan.keep_per_cluster
    if keep.sum() > plan.target_num_items:
        # round-robin: every cluster's nearest first, then every cluster's second nearest, ...
        candidates = np.flatnonzero(keep)
        by_priority = candidates[np.lexsort((distances[candidates], rank[candidates]))]
        keep = np.zeros(count, dtype=bool)
        keep[by_priority[: plan.target_num_items]] = True
    return keep, assignment, k


def _decode(image_bytes: bytes):
    """The image as stored, transparency kept (the teacher's processor composites it as in training)."""
    from PIL import Image

    image = Image.open(io.BytesIO(image_bytes))
    image.load()
    if image.mode in ("RGB", "RGBA"):
        return image
    has_alpha = image.mode in ("LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    return image.convert("RGBA" if has_alpha else "RGB")


# --- the whole step -------------------------------------------------------------------------------


def curate_dataset(
    input_location: str | Path,
    output_dir: str | Path,
    config: CurationConfig | None = None,
    embed_fn: EmbedFn | None = None,
    embedder_name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CurationReport:
    """Curate a shard dataset into ``output_dir``; see the module docstring for the rules."""
    started = time.monotonic()
    config = config or CurationConfig()
    embedding = config.embeds_images()
    if not embedding:
        embed_fn, embedder_name = None, "none (every image kept: no sampling, no embedding needed)"
    elif embed_fn is None:
        if config.embedder == "thumbnail":
            embed_fn, default_name = thumbnail_embed, "thumbnail-8x8"
        else:
            embed_fn, default_name = default_embed_fn(config.embed_num_threads, config.cache_teacher_features)
        embedder_name = embedder_name or default_name
    embedder_name = embedder_name or getattr(embed_fn, "__name__", "custom")
    manifest = read_manifest(input_location)

    keys: list[str] = []
    dropped: dict[str, tuple[str, str]] = {}
    candidate_rows: list[int] = []
    vectors: list[np.ndarray] = []
    batch_images: list = []
    fingerprints = ImageFingerprints()
    use_hashes = config.near_duplicate_method == "perceptual-hash"

    def flush() -> None:
        if batch_images and embed_fn is not None:
            vectors.append(np.asarray(embed_fn(batch_images), dtype=np.float32))
        batch_images.clear()

    for sample in iter_samples(input_location, manifest=manifest):
        keys.append(sample.key)
        width, height = sample.meta.get("width", 0), sample.meta.get("height", 0)
        if width < config.min_width_pixels or height < config.min_height_pixels or sample.image_bytes is None:
            dropped[sample.key] = ("resolution", f"{width}x{height} below {config.min_width_pixels}x{config.min_height_pixels}")
            continue
        candidate_rows.append(len(keys) - 1)
        image = _decode(sample.image_bytes)
        if use_hashes:
            fingerprints.add(image)
        batch_images.append(image)
        if len(batch_images) >= config.embed_batch_size:
            flush()
            if progress is not None:
                progress(len(candidate_rows), manifest.num_items)
    flush()
    if progress is not None:
        progress(len(keys), manifest.num_items)

    num_clusters_used = 0
    plan = None
    if candidate_rows:
        embeddings = _normalise(np.concatenate(vectors)) if embedding else None
        if config.near_duplicate_method == "perceptual-hash":
            duplicates = find_near_duplicate_images(fingerprints, config.near_duplicate_rule)
        elif config.near_duplicate_method == "embedding":
            duplicates = {row: (original, f"cosine {cosine:.4f}") for row, (original, cosine)
                          in find_near_duplicates(embeddings, config.near_duplicate_cosine).items()}
        else:
            duplicates = {}
        for row, (original, why) in duplicates.items():
            dropped[keys[candidate_rows[row]]] = ("near_duplicate", f"{why} to {keys[candidate_rows[original]]}")
        unique_rows = [row for row in range(len(candidate_rows)) if row not in duplicates]
        plan = plan_clusters(len(unique_rows), config)
        if plan.num_clusters == 0:
            keep, assignment = np.ones(len(unique_rows), dtype=bool), np.zeros(len(unique_rows), dtype=np.int64)
        else:
            assert embeddings is not None, "a cluster plan implies embeds_images()"
            keep, assignment, num_clusters_used = select_by_clusters(embeddings[unique_rows], plan, config)
        for position, row in enumerate(unique_rows):
            if not keep[position]:
                dropped[keys[candidate_rows[row]]] = ("cluster_overflow", f"cluster {int(assignment[position])}: not among the nearest kept")

    output_dir = Path(output_dir)
    written = write_subset(
        input_location, manifest, output_dir, lambda key: key not in dropped,
        extra={"curation": config.model_dump(), "embedder": embedder_name, "input_dataset_hash": manifest.dataset_hash},
    )
    log_path = output_dir / CURATION_LOG
    with open(log_path, "w", encoding="utf-8") as log:
        for key in keys:
            if key in dropped:
                reason, detail = dropped[key]
                log.write(json.dumps({"key": key, "reason": reason, "detail": detail}) + "\n")
    reasons: dict[str, int] = {}
    for reason, _ in dropped.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    report = CurationReport(
        input_dataset_hash=manifest.dataset_hash,
        dataset_dir=str(output_dir),
        dataset_hash=written.dataset_hash,
        num_in=len(keys),
        num_kept=written.num_items,
        dropped_by_reason=dict(sorted(reasons.items())),
        num_clusters_used=num_clusters_used,
        cluster_plan=plan,
        rules_in_force=rules_in_force(config, plan, embedder_name),
        embedder=embedder_name,
        curation_log_path=str(log_path),
        elapsed_seconds=round(time.monotonic() - started, 3),
    )
    if not report.reconciles:  # pragma: no cover - a bug here, never bad input
        raise AssertionError(f"curation counts do not reconcile: {report}")
    return report


# Bump when curation logic changes what it writes: it is part of the cache key.
CURATION_CODE_VERSION = "curate-2"  # 2: derived cluster plan, perceptual-hash near duplicates, alpha kept
CURATION_REPORT = "curation_report.json"


def curation_key(input_dataset_hash: str, config: CurationConfig) -> str:
    """Content key of a curation: (input dataset hash, config, code version)."""
    return hashlib.sha256(f"{CURATION_CODE_VERSION}\0{input_dataset_hash}\0{config.model_dump_json()}".encode()).hexdigest()


def curate_staged(
    input_dir: str,
    input_dataset_hash: str,
    config: CurationConfig,
    progress: Callable[[int, int], None] | None = None,
) -> CurationReport:
    """Curate into ``<home>/staging/curate-<key>``; an identical earlier curation that verifies is reused.

    The input is addressed by hash: if ``input_dir`` no longer holds it, the registered version is used.
    """
    from eve_model.shards import DatasetIntegrityError, verify_dataset
    from tasks.data.versioning import resolve_dataset
    from tasks.platform import PlatformSettings
    from tasks.publish import produce_once

    out_dir = PlatformSettings.load().path("staging") / f"curate-{curation_key(input_dataset_hash, config)[:24]}"

    def finished(directory: Path) -> bool:
        if not (directory / CURATION_REPORT).exists():
            return False
        try:
            verify_dataset(directory)
            return True
        except DatasetIntegrityError:
            return False

    def produce(private: Path) -> None:
        report = curate_dataset(resolve_dataset(input_dir, input_dataset_hash), private, config, progress=progress)
        located = report.model_copy(update={"dataset_dir": str(out_dir)})  # where it is published
        (private / CURATION_REPORT).write_text(located.model_dump_json(indent=2, exclude={"elapsed_seconds"}))

    produce_once(out_dir, produce, finished)  # private folder, then one atomic rename (tasks.publish)
    return CurationReport.model_validate_json((out_dir / CURATION_REPORT).read_text())


@task(
    name="curate-dataset",
    retries=1,
    timeout_seconds=6 * 3600,
    cache_key_fn=lambda context, parameters: "curate-" + curation_key(parameters["input_dataset_hash"], parameters["config"]),
    cache_expiration=timedelta(days=30),
    persist_result=True,
)
def curate_dataset_task(input_dir: str, input_dataset_hash: str, config: CurationConfig) -> CurationReport:
    """Curate a staged dataset; counts go to a table artifact. Cached on (input hash, config)."""
    from prefect import get_run_logger
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from tasks.lineage.openlineage import lineage_run
    from tasks.lineage.openlineage_refs import dataset_ref

    run_logger = get_run_logger()
    with lineage_run("curate", [dataset_ref(input_dir, "ingested", input_dataset_hash)]) as written:
        report = curate_staged(
            input_dir, input_dataset_hash, config,
            progress=lambda done, total: run_logger.info("curation: embedded %d/%d", done, total),
        )
        written.append(dataset_ref(report.dataset_dir, "curated", report.dataset_hash, report.num_kept))
    create_table_artifact(
        key="curation-counts", table=report.table_rows(),
        description=f"Curation of {report.input_dataset_hash[:16]} -> {report.dataset_hash[:16]} ({report.embedder})",
    )
    create_markdown_artifact(key="curation-report", markdown=report.summary_markdown(),
                             description="curation counts and the rules in force")
    run_logger.info("curation kept %d of %d (%s); rules: %s", report.num_kept, report.num_in,
                    report.dropped_by_reason, "; ".join(report.rules_in_force))
    return report
