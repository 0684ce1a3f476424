"""Curation: resolution filter, near-duplicate removal and k-means diversity sampling (docs/model.md, "Data curation").

The paper keeps LAION images above 448x448, embeds them with EVA-CLIP, runs k-means with 50,000
clusters and keeps the 300 images nearest each centroid. Here the same steps run on any embedding
function ``embed_fn(list[PIL.Image]) -> (N, D) array``; the default is the platform's vision teacher
(``eve_model.teachers``, EfficientNet-Lite0 in the embedded default, CLIP in production), with a
colour-thumbnail embedding as a clearly reported fallback when the teacher cannot be built.

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
import shutil
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Literal

import numpy as np
from prefect import task
from pydantic import BaseModel, Field

from eve_model.shards import iter_samples, read_manifest, write_subset

logger = logging.getLogger(__name__)

EmbedFn = Callable[[list], np.ndarray]
CURATION_LOG = "curation_log.jsonl"


class CurationConfig(BaseModel):
    """Curation rules; the defaults are the demo scale (600 scenes -> at most 50 x 10), ``paper()`` the EVE-7B scale."""

    min_width_pixels: int = Field(default=64, ge=1)
    """Resolution filter: drop narrower images (paper: >448)."""

    min_height_pixels: int = Field(default=64, ge=1)
    """Resolution filter: drop shorter images."""

    near_duplicate_cosine: float = Field(default=0.95, gt=0.0, le=1.0)
    """Two images at or above this cosine similarity are near-duplicates; the later one is dropped."""

    num_clusters: int = Field(default=50, ge=1)
    """k of k-means (paper: 50,000). Capped at the number of remaining images."""

    keep_per_cluster: int = Field(default=10, ge=1)
    """Keep at most this many images nearest each centroid (paper: 300)."""

    target_num_items: int | None = Field(default=None, ge=1)
    """If set, keep exactly this many (or all, if fewer remain), taken round-robin by distance rank across clusters."""

    kmeans_iterations: int = Field(default=20, ge=1)
    seed: int = 1234
    """Seed of k-means initialisation."""

    embed_batch_size: int = Field(default=32, ge=1)

    embedder: Literal["teacher", "thumbnail"] = "teacher"
    """Embedding used when the caller passes none: the platform's vision teacher (falls back to the
    thumbnail, reported as such, when it cannot be built) or the fast 8x8 colour thumbnail."""

    embed_num_threads: int | None = Field(default=1, ge=1)
    """torch intra-op threads while embedding (None: leave torch's setting). One thread per process
    avoids the oversubscription that made 2 threads ~5x slower on a shared 2-core machine."""

    cache_teacher_features: bool = True
    """Keep the teacher's patch features of every embedded image under the platform home
    (``eve_model.teacher_cache``), so training stages that cache too never run the teacher on
    them again. About 250 KB per image with EfficientNet-Lite0: on at demo scale, off in ``paper()``."""

    @classmethod
    def paper(cls) -> "CurationConfig":
        return cls(min_width_pixels=449, min_height_pixels=449, num_clusters=50_000, keep_per_cluster=300,
                   cache_teacher_features=False)


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
        return rows


# --- embeddings -----------------------------------------------------------------------------------


def thumbnail_embed(images: list) -> np.ndarray:
    """Fallback embedding: a 8x8 RGB thumbnail, mean-centred and L2-normalised. (N,) images -> (N, 192)."""
    vectors = []
    for image in images:
        thumb = np.asarray(image.convert("RGB").resize((8, 8)), dtype=np.float32).reshape(-1) / 255.0
        thumb -= thumb.mean()
        vectors.append(thumb / (np.linalg.norm(thumb) + 1e-8))
    return np.stack(vectors).astype(np.float32)


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
    embeddings: np.ndarray, config: CurationConfig
) -> tuple[np.ndarray, np.ndarray, int]:
    """k-means, then the nearest images per centroid. (N, D) -> (keep mask (N,), cluster id (N,), k)."""
    import faiss

    count, dim = embeddings.shape
    k = min(config.num_clusters, count)
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
    keep = rank < config.keep_per_cluster
    if config.target_num_items is not None and keep.sum() > config.target_num_items:
        # round-robin: every cluster's nearest first, then every cluster's second nearest, ...
        candidates = np.flatnonzero(keep)
        by_priority = candidates[np.lexsort((distances[candidates], rank[candidates]))]
        keep = np.zeros(count, dtype=bool)
        keep[by_priority[: config.target_num_items]] = True
    return keep, assignment, k


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
    from PIL import Image

    started = time.monotonic()
    config = config or CurationConfig()
    if embed_fn is None:
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

    def flush() -> None:
        if batch_images:
            vectors.append(np.asarray(embed_fn(batch_images), dtype=np.float32))
            batch_images.clear()

    for sample in iter_samples(input_location, manifest=manifest):
        keys.append(sample.key)
        width, height = sample.meta.get("width", 0), sample.meta.get("height", 0)
        if width < config.min_width_pixels or height < config.min_height_pixels or sample.image_bytes is None:
            dropped[sample.key] = ("resolution", f"{width}x{height} below {config.min_width_pixels}x{config.min_height_pixels}")
            continue
        candidate_rows.append(len(keys) - 1)
        batch_images.append(Image.open(io.BytesIO(sample.image_bytes)).convert("RGB"))
        if len(batch_images) >= config.embed_batch_size:
            flush()
            if progress is not None:
                progress(len(candidate_rows), manifest.num_items)
    flush()
    if progress is not None:
        progress(len(keys), manifest.num_items)

    num_clusters_used = 0
    if candidate_rows:
        embeddings = _normalise(np.concatenate(vectors))
        duplicates = find_near_duplicates(embeddings, config.near_duplicate_cosine)
        for row, (original, cosine) in duplicates.items():
            dropped[keys[candidate_rows[row]]] = ("near_duplicate", f"cosine {cosine:.4f} to {keys[candidate_rows[original]]}")
        unique_rows = [row for row in range(len(candidate_rows)) if row not in duplicates]
        keep, assignment, num_clusters_used = select_by_clusters(embeddings[unique_rows], config)
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
        embedder=embedder_name,
        curation_log_path=str(log_path),
        elapsed_seconds=round(time.monotonic() - started, 3),
    )
    if not report.reconciles:  # pragma: no cover - a bug here, never bad input
        raise AssertionError(f"curation counts do not reconcile: {report}")
    return report


# Bump when curation logic changes what it writes: it is part of the cache key.
CURATION_CODE_VERSION = "curate-1"
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

    out_dir = PlatformSettings.load().path("staging") / f"curate-{curation_key(input_dataset_hash, config)[:24]}"
    report_path = out_dir / CURATION_REPORT
    if report_path.exists():
        try:
            verify_dataset(out_dir)
            return CurationReport.model_validate_json(report_path.read_text())
        except DatasetIntegrityError:
            pass
    shutil.rmtree(out_dir, ignore_errors=True)  # leftovers of an interrupted curation
    report = curate_dataset(resolve_dataset(input_dir, input_dataset_hash), out_dir, config, progress=progress)
    report_path.write_text(report.model_dump_json(indent=2, exclude={"elapsed_seconds"}))
    return report


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
    from prefect.artifacts import create_table_artifact

    run_logger = get_run_logger()
    report = curate_staged(
        input_dir, input_dataset_hash, config, progress=lambda done, total: run_logger.info("curation: embedded %d/%d", done, total)
    )
    create_table_artifact(
        key="curation-counts", table=report.table_rows(),
        description=f"Curation of {report.input_dataset_hash[:16]} -> {report.dataset_hash[:16]} ({report.embedder})",
    )
    run_logger.info("curation kept %d of %d (%s)", report.num_kept, report.num_in, report.dropped_by_reason)
    return report
