"""Caption a shard dataset into a new dataset version, resumably.

    result = caption_dataset("/data/curated-v3", "/data/captioned-v3",
                             CaptionConfig(backend="openai", model="tiny-eve", endpoint_url="http://127.0.0.1:8000/v1"))

Each output sample is its input sample with ``caption`` replaced, ``caption_provenance`` set and
the original caption kept as ``source_caption`` (the first one: recaptioning a captioned version
keeps the true original). A sample the teacher could not caption keeps ``caption = null`` and
its provenance says why, so nothing is dropped silently and the quality gate filters it with a
reason.

Resume: the run's id is a hash of (input dataset, backend identity). Captions of each input
shard are committed to ``<home>/caption-runs/<run_id>/part-NNNNNN.jsonl`` atomically once the
shard is done; a rerun after a crash skips committed shards, and within the interrupted shard
the persistent cache returns every batch that finished. The output version is written from the
parts at the end (deterministic: same samples -> same hashes), then the parts are removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from tqdm import tqdm

from eve_model.shards import DatasetIntegrityError, ShardSample, ShardWriter, read_manifest, read_shard, verify_dataset
from tasks.caption.backends import CaptionBackend, CaptionInput, build_backend
from tasks.caption.cache import CaptionCache, cache_key
from tasks.caption.config import CaptionConfig
from tasks.caption.provenance import BackendIdentity, CaptionProvenance
from tasks.platform import PlatformSettings
from tasks.publish import private_path, produce_once

logger = logging.getLogger(__name__)


class CaptionRunResult(BaseModel):
    """Outcome of a captioning run; ``num_samples == num_captioned + num_failed``."""

    run_id: str
    """Hash of (input dataset, backend identity): the resume key."""
    input_dataset_hash: str
    """dataset_hash of the input version."""
    output_dataset_hash: str
    """dataset_hash of the captioned version."""
    output_location: str
    """Where the captioned version was written."""
    identity: BackendIdentity
    """Backend identity (model, weights hash, prompt template, decoding)."""
    num_samples: int
    """Samples in (and out)."""
    num_captioned: int
    """Samples with a caption."""
    num_failed: int
    """Samples without one (their provenance carries the error)."""
    num_from_cache: int = 0
    """Captions taken from the cache in this invocation."""
    num_generated: int = 0
    """Captions the backend produced in this invocation."""
    num_shards: int = 0
    """Input shards."""
    num_shards_resumed: int = 0
    """Shards already committed by an earlier, interrupted invocation."""
    work_dir: str = ""
    """Directory of the committed per-shard parts."""
    duration_seconds: float = 0.0
    """Wall time of this invocation."""
    started_at: str = ""
    """UTC time this invocation started (ISO 8601). Provenance beside the content: the result lives
    in the manifest's ``extra``, which the dataset hash excludes."""


def _source_caption(meta: dict[str, Any], field: str = "caption") -> str | None:
    """The text a recaptioning run starts from: the original caption of an already recaptioned
    version, else the named field (``caption``, or the demo's ``true_caption``)."""
    return meta["source_caption"] if "source_caption" in meta else meta.get(field)


def _caption_shard(
    samples: list[ShardSample],
    backend: CaptionBackend,
    cache: CaptionCache | None,
    run_id: str,
    batch_size: int,
    progress: tqdm,
) -> tuple[list[dict[str, Any]], int, int]:
    """Records {key, caption, provenance} for one shard; also (from cache, generated) counts."""
    identity = backend.identity
    records: list[dict[str, Any]] = []
    from_cache = generated = 0
    for start in range(0, len(samples), batch_size):
        batch = samples[start : start + batch_size]
        inputs = [
            CaptionInput(
                key=sample.key,
                image_bytes=sample.image_bytes,
                image_ext=sample.image_ext,
                image_sha256=sample.meta.get("image_sha256")
                or hashlib.sha256(sample.image_bytes or b"").hexdigest(),
                source_caption=_source_caption(sample.meta, getattr(backend, "source_field", "caption")),
            )
            for sample in batch
        ]
        keys = [cache_key(item.image_sha256, identity) for item in inputs]
        cached = cache.get_many(keys) if cache is not None else {}
        todo = [index for index, key in enumerate(keys) if key not in cached]
        outputs = backend.caption_batch([inputs[index] for index in todo]) if todo else []
        fresh = dict(zip(todo, outputs))
        new_entries = []
        for index, item in enumerate(inputs):
            if keys[index] in cached:
                caption, cached_provenance = cached[keys[index]]
                # Content only: this run's id, and no time from an older record (see CaptionProvenance).
                provenance = CaptionProvenance.model_validate(cached_provenance).model_copy(
                    update={"caption_run_id": run_id}).model_dump(mode="json")
                from_cache += 1
            else:
                output = fresh[index]
                provenance = CaptionProvenance.from_identity(identity, run_id, output.error).model_dump(mode="json")
                caption = output.caption
                generated += 1
                if caption is not None and item.image_bytes is not None:
                    new_entries.append((keys[index], caption, provenance))
            records.append({"key": item.key, "caption": caption, "provenance": provenance})
        if cache is not None and new_entries:
            cache.put_many(new_entries)
        progress.update(len(batch))
    return records, from_cache, generated


def _write_part(path: Path, shard_sha256: str, records: list[dict[str, Any]]) -> None:
    # A concurrent run of the same caption run may be writing the same part or have removed the
    # finished work folder: its own temporary name, and the folder made again if it is gone.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = private_path(path)
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"shard_sha256": shard_sha256, "num_records": len(records)}) + "\n")
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _read_part(path: Path, shard_sha256: str) -> list[dict[str, Any]] | None:
    """A committed part for this shard, or None when absent or written for other content."""
    if not path.exists():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    if header.get("shard_sha256") != shard_sha256 or header.get("num_records") != len(lines) - 1:
        return None
    return [json.loads(line) for line in lines[1:]]


def caption_dataset(
    input_location: str | Path,
    output_dir: str | Path,
    config: CaptionConfig,
    *,
    settings: PlatformSettings | None = None,
    backend: CaptionBackend | None = None,
    progress: bool = True,
) -> CaptionRunResult:
    """Caption every sample of ``input_location`` into a new version at ``output_dir`` (see module doc)."""
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    settings = settings or PlatformSettings.load()
    manifest = read_manifest(input_location)
    owns_backend = backend is None
    backend = backend or build_backend(config)
    try:
        identity = backend.identity
        run_id = hashlib.sha256(f"{manifest.dataset_hash}|{identity.fingerprint()}".encode()).hexdigest()[:16]
        output_dir = Path(output_dir)
        if (output_dir / "manifest.json").exists():
            existing_manifest = read_manifest(output_dir)
            existing = existing_manifest.extra.get("caption_run", {})
            if existing.get("run_id") != run_id:
                raise DatasetIntegrityError(
                    f"{output_dir} already holds a dataset that is not caption run {run_id}; choose another output"
                )
            # Finished before: nothing was captioned in this invocation.
            return CaptionRunResult.model_validate(existing["result"]).model_copy(update={
                "output_dataset_hash": existing_manifest.dataset_hash, "num_from_cache": 0, "num_generated": 0,
                "num_shards_resumed": existing_manifest.extra["caption_run"]["result"]["num_shards"],
                "duration_seconds": time.perf_counter() - started,
            })

        work_dir = settings.path("caption-runs", run_id)
        cache = CaptionCache(settings.cache_dir / "captions.sqlite") if config.use_cache and backend.cacheable else None
        counts = {"from_cache": 0, "generated": 0, "resumed": 0}
        parts: list[list[dict[str, Any]]] = []
        bar = tqdm(total=manifest.num_items, desc=f"caption[{identity.backend}]", unit="img",
                   disable=not progress, mininterval=2.0)
        try:
            for index, shard in enumerate(manifest.shards):
                part_path = work_dir / f"part-{index:06d}.jsonl"
                records = _read_part(part_path, shard.sha256)
                if records is not None:
                    counts["resumed"] += 1
                    bar.update(shard.num_items)
                else:
                    samples = read_shard(input_location, shard)
                    records, from_cache, generated = _caption_shard(
                        samples, backend, cache, run_id, config.batch_size, bar
                    )
                    counts["from_cache"] += from_cache
                    counts["generated"] += generated
                    _write_part(part_path, shard.sha256, records)
                    logger.info("caption run %s: shard %d/%d committed (%d cached, %d generated)",
                                run_id, index + 1, len(manifest.shards), from_cache, generated)
                parts.append(records)
        finally:
            bar.close()
            if cache is not None:
                cache.close()

        num_failed = sum(1 for records in parts for record in records if record["caption"] is None)
        result = CaptionRunResult(
            run_id=run_id,
            input_dataset_hash=manifest.dataset_hash,
            output_dataset_hash="",
            output_location=str(output_dir),
            identity=identity,
            num_samples=manifest.num_items,
            num_captioned=manifest.num_items - num_failed,
            num_failed=num_failed,
            num_from_cache=counts["from_cache"],
            num_generated=counts["generated"],
            num_shards=len(manifest.shards),
            num_shards_resumed=counts["resumed"],
            work_dir=str(work_dir),
            started_at=started_at,
        )

        def produce(private: Path) -> None:
            _write_output(input_location, manifest, private, parts, result)

        # Produced privately and renamed into place (tasks.publish): a concurrent identical run
        # either publishes first (this one reuses its verified output) or finds this one's.
        produce_once(output_dir, produce, lambda directory: _finished_run(directory, run_id))
        result.output_dataset_hash = read_manifest(output_dir).dataset_hash
        # The parts only serve crash recovery; once the version exists, the cache serves reruns.
        shutil.rmtree(work_dir, ignore_errors=True)
        result.duration_seconds = time.perf_counter() - started
        return result
    finally:
        if owns_backend:
            backend.close()


def _finished_run(directory: Path, run_id: str) -> bool:
    """Whether ``directory`` holds the verified output of caption run ``run_id``."""
    if not (directory / "manifest.json").exists():
        return False
    try:
        manifest = verify_dataset(directory)
    except DatasetIntegrityError:
        return False
    return manifest.extra.get("caption_run", {}).get("run_id") == run_id


def _write_output(input_location, manifest, output_dir: Path, parts, result: CaptionRunResult) -> str:
    largest_shard = max((shard.num_items for shard in manifest.shards), default=1)
    # The result is stored in the manifest so that rerunning a finished run answers from it.
    extra = {**manifest.extra, "caption_run": {"run_id": result.run_id, "result": result.model_dump(mode="json")}}
    with ShardWriter(output_dir, max_items_per_shard=largest_shard, extra=extra) as writer:
        for shard, records in zip(manifest.shards, parts):
            by_key = {record["key"]: record for record in records}
            for sample in read_shard(input_location, shard):
                record = by_key[sample.key]
                meta = dict(sample.meta)
                meta["source_caption"] = _source_caption(sample.meta)
                meta["caption"] = record["caption"]
                meta["caption_provenance"] = record["provenance"]
                writer.write(ShardSample(sample.key, meta, sample.image_bytes, sample.image_ext))
    return writer.manifest.dataset_hash


__all__ = ["CaptionRunResult", "caption_dataset"]
