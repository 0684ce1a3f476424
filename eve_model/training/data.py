"""Deterministic, resumable, rank-sharded sample order over an ``eve_model.shards`` dataset.

Order. For epoch ``e`` the order is a pure function of ``(seed, e)``: the shard list is permuted,
cut into blocks of ``shuffle_block_shards`` shards, and the samples of each block are permuted.
Block-local shuffling keeps the shards a rank touches at once bounded (two blocks' member
indexes and file handles) while still mixing samples across shards; at toy scale (one block) it
is a full shuffle. With ``group_by_modality_length`` (SFT) each block is then regrouped into
single-modality global batches sorted by length (``SampleOrder._group_by_modality_length``).

Reading. A rank reads only its own samples (``ShardReader``: tar member index, ranged reads), so
each of W ranks reads about 1/W of the dataset (``benchmarks/bench_rank_reads.py``); loader
workers (``prepared_steps``) read, decode and collate steps ahead of the training loop.

Sharding over ranks. Step ``s`` (1-based) of epoch ``e`` consumes the global window
``order[(s' ) * G : (s' + 1) * G]`` with ``s' = (s - 1) mod steps_per_epoch`` and ``G`` the global
batch; rank ``r`` takes the contiguous slice ``[r * G/W, (r + 1) * G/W)`` of the window and splits it
into micro-batches. The trailing ``N mod G`` samples of an epoch are dropped.

Resume. The loader position saved with every checkpoint is ``(epoch, sample_offset)`` in samples,
not per-rank cursors, so a run resumes exactly (no sample seen twice, none skipped) even on a
different world size as long as the global batch is unchanged.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eve_model.shards import IMAGE_EXTENSIONS, DatasetIntegrityError, DatasetManifest, ShardSample, _open


@dataclass(frozen=True)
class LoaderPosition:
    """Where the loader stands: ``sample_offset`` samples of epoch ``epoch``'s order are consumed."""

    epoch: int
    sample_offset: int

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "LoaderPosition":
        return cls(epoch=int(payload["epoch"]), sample_offset=int(payload["sample_offset"]))


@dataclass(frozen=True)
class MicroBatch:
    """The samples one rank pushes through one forward/backward."""

    keys: list[str]
    samples: list[ShardSample]


@dataclass(frozen=True)
class StepBatch:
    """The micro-batches of one rank for one optimizer step, and the position after the step."""

    step: int
    micro_batches: list[MicroBatch]
    position_after: LoaderPosition


class SampleOrder:
    """Per-epoch sample order of a dataset as global indices (manifest order = index order)."""

    def __init__(
        self,
        manifest: DatasetManifest,
        seed: int,
        shuffle_block_shards: int,
        group_batch_size: int | None = None,
        modality_lengths=None,
    ) -> None:
        """``group_batch_size``: group by modality and length in batches of this many samples (the
        global batch); then ``modality_lengths(global_indices) -> (has_image, lengths)`` must be given."""
        self.manifest = manifest
        self.seed = seed
        self.shuffle_block_shards = shuffle_block_shards
        self.group_batch_size = group_batch_size
        self.modality_lengths = modality_lengths
        if group_batch_size is not None and modality_lengths is None:
            raise ValueError("grouping by modality and length needs the samples' modality_lengths")
        counts = np.array([shard.num_items for shard in manifest.shards], dtype=np.int64)
        self.shard_starts = np.concatenate([[0], np.cumsum(counts)])
        self.num_samples = int(self.shard_starts[-1])

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Global sample indices of ``epoch`` in consumption order; shape (num_samples,)."""
        rng = np.random.default_rng([self.seed, epoch])
        shard_order = rng.permutation(len(self.manifest.shards))
        pieces = []
        for block_number, block_start in enumerate(range(0, len(shard_order), self.shuffle_block_shards)):
            block = shard_order[block_start : block_start + self.shuffle_block_shards]
            indices = np.concatenate(
                [np.arange(self.shard_starts[i], self.shard_starts[i + 1]) for i in block]
            )
            shuffled = indices[rng.permutation(len(indices))]
            if self.group_batch_size is not None:
                shuffled = self._group_by_modality_length(shuffled, np.random.default_rng([self.seed, epoch, block_number]))
            pieces.append(shuffled)
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)

    def _group_by_modality_length(self, shuffled: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """LLaVA's ``group_by_modality_length`` over one shuffle block, independent of the world size.

        The block's samples (already shuffled) split into image and text-only samples; each list is
        cut into global batches, each batch sorted by length (longest first) so its micro-batches
        pad little; the batches of both kinds are shuffled together, and the leftovers of the two
        lists (fewer than a batch each) form the block's last, mixed samples. A pure function of
        (seed, epoch, block), so a saved position resumes exactly.
        """
        has_image, lengths = self.modality_lengths(shuffled)
        batch = self.group_batch_size
        batches, leftovers = [], []
        for kind in (has_image, ~has_image):
            members, member_lengths = shuffled[kind], lengths[kind]
            full = len(members) // batch * batch
            for start in range(0, full, batch):
                chunk, chunk_lengths = members[start : start + batch], member_lengths[start : start + batch]
                batches.append(chunk[np.argsort(-chunk_lengths, kind="stable")])
            leftovers.append(members[full:])
        order = [batches[i] for i in rng.permutation(len(batches))] + leftovers
        return np.concatenate(order) if order else shuffled

    def locate(self, global_index: int) -> tuple[int, int]:
        """(shard index, index within the shard) of a global sample index."""
        shard_index = int(np.searchsorted(self.shard_starts, global_index, side="right") - 1)
        return shard_index, int(global_index - self.shard_starts[shard_index])


@dataclass(frozen=True)
class SampleSpan:
    """Where one sample's members lie in its tar shard (byte offsets of the member data)."""

    meta_offset: int
    meta_size: int
    image_offset: int | None = None
    image_size: int | None = None
    image_ext: str | None = None

    @property
    def has_image(self) -> bool:
        return self.image_offset is not None


_TAR_BLOCK = 512


def scan_shard_index(handle, origin: str) -> dict[str, SampleSpan]:
    """The member index of a tar shard from its headers alone: one 512-byte header read per member,
    the member data skipped with ``seek`` (each header's checksum is checked by ``tarfile``)."""
    members: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    offset = 0
    while True:
        handle.seek(offset)
        header = handle.read(_TAR_BLOCK)
        if len(header) < _TAR_BLOCK or header.count(0) == _TAR_BLOCK:
            break
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
        except tarfile.TarError as error:
            raise DatasetIntegrityError(f"{origin}: bad tar header at byte {offset}: {error}") from error
        if not info.isfile():
            raise DatasetIntegrityError(f"{origin}: unexpected non-file member {info.name!r}")
        key, _, ext = info.name.partition(".")
        data_offset = offset + _TAR_BLOCK
        if ext == "json":
            members[key] = {"meta_offset": data_offset, "meta_size": info.size}
            order.append(key)
        elif ext in IMAGE_EXTENSIONS and key in members:
            members[key].update(image_offset=data_offset, image_size=info.size, image_ext=ext)
        else:
            raise DatasetIntegrityError(f"{origin}: member {info.name!r} has no metadata before it")
        offset = data_offset + -(-info.size // _TAR_BLOCK) * _TAR_BLOCK
    return {key: SampleSpan(**members[key]) for key in order}


class ShardReader:
    """Reads single samples out of a dataset's tar shards, never whole shards.

    Each shard's member index comes from its tar headers (``scan_shard_index``), kept in memory
    for the last few shards and, with ``index_cache_dir``, on disk keyed by the shard's sha256 so
    that a shard's headers are scanned once per cache, not once per rank. A sample is then one
    ranged read of its metadata and one of its image. Integrity per sample: the image bytes must
    hash to the metadata's ``image_sha256`` (written at ingest); the dataset as a whole is pinned
    by the manifest hash in the preflight. ``bytes_read`` counts every byte read from shards and
    index files (the per-rank read benchmark reports it).
    """

    def __init__(self, location: str, manifest: DatasetManifest, capacity: int, index_cache_dir: str | None = None) -> None:
        self.location = location
        self.manifest = manifest
        self.capacity = capacity
        self.index_cache_dir = Path(index_cache_dir) if index_cache_dir else None
        self.bytes_read = 0
        self._indexes: OrderedDict[int, list[tuple[str, SampleSpan]]] = OrderedDict()
        self._handles: OrderedDict[int, Any] = OrderedDict()
        self._owner_pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        # Loader worker processes open their own file handles.
        state = dict(self.__dict__)
        state["_handles"] = OrderedDict()
        return state

    def _handle(self, shard_index: int):
        if self._owner_pid != os.getpid():
            # A forked loader worker: an inherited file shares its offset with the parent's and the
            # other workers' copies, so seek+read would interleave. Open our own.
            self._handles = OrderedDict()
            self._owner_pid = os.getpid()
        if shard_index not in self._handles:
            self._handles[shard_index] = _open(self.location, self.manifest.shards[shard_index].name)
            while len(self._handles) > self.capacity:
                self._handles.popitem(last=False)[1].close()
        self._handles.move_to_end(shard_index)
        return self._handles[shard_index]

    def _read(self, shard_index: int, offset: int, size: int) -> bytes:
        handle = self._handle(shard_index)
        handle.seek(offset)
        data = handle.read(size)
        self.bytes_read += len(data)
        if len(data) != size:
            raise DatasetIntegrityError(
                f"{self.location}/{self.manifest.shards[shard_index].name}: truncated at byte {offset + len(data)}"
            )
        return data

    def index(self, shard_index: int) -> list[tuple[str, SampleSpan]]:
        """(key, span) of every sample of the shard, in shard order."""
        if shard_index not in self._indexes:
            self._indexes[shard_index] = self._load_index(shard_index)
            while len(self._indexes) > self.capacity:
                self._indexes.popitem(last=False)
        self._indexes.move_to_end(shard_index)
        return self._indexes[shard_index]

    def _load_index(self, shard_index: int) -> list[tuple[str, SampleSpan]]:
        shard = self.manifest.shards[shard_index]
        origin = f"{self.location}/{shard.name}"
        cached = self.index_cache_dir / f"{shard.sha256}.json" if self.index_cache_dir else None
        if cached is not None and cached.exists():
            payload = cached.read_bytes()
            self.bytes_read += len(payload)
            entries = [(key, SampleSpan(*values)) for key, values in json.loads(payload)]
        else:
            handle = self._handle(shard_index)
            counting = _CountingReader(handle)
            entries = list(scan_shard_index(counting, origin).items())
            self.bytes_read += counting.bytes_read
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps([[key, list(astuple(span))] for key, span in entries], separators=(",", ":")))
                tmp.replace(cached)
        if len(entries) != shard.num_items:
            raise DatasetIntegrityError(f"{origin}: holds {len(entries)} samples, manifest says {shard.num_items}")
        return entries

    def sample(self, shard_index: int, item_index: int) -> ShardSample:
        key, span = self.index(shard_index)[item_index]
        origin = f"{self.location}/{self.manifest.shards[shard_index].name}"
        try:
            meta = json.loads(self._read(shard_index, span.meta_offset, span.meta_size).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DatasetIntegrityError(f"{origin}: metadata of {key} is not valid JSON: {error}") from error
        sample = ShardSample(key=key, meta=meta)
        if span.has_image:
            image = self._read(shard_index, span.image_offset, span.image_size)
            expected = meta.get("image_sha256")
            if expected and hashlib.sha256(image).hexdigest() != expected:
                raise DatasetIntegrityError(f"{origin}: image of {key} does not match its image_sha256 (corrupt or replaced)")
            sample.image_bytes, sample.image_ext = image, span.image_ext
        return sample

    def close(self) -> None:
        while self._handles:
            self._handles.popitem()[1].close()


class _CountingReader:
    """A file wrapper that counts the bytes read through it."""

    def __init__(self, handle) -> None:
        self._handle = handle
        self.bytes_read = 0

    def seek(self, offset: int) -> int:
        return self._handle.seek(offset)

    def read(self, size: int) -> bytes:
        data = self._handle.read(size)
        self.bytes_read += len(data)
        return data


class ResumableShardLoader:
    """Yields each rank's micro-batches step by step, starting from a saved ``LoaderPosition``."""

    def __init__(
        self,
        location: str,
        manifest: DatasetManifest,
        *,
        seed: int,
        shuffle_block_shards: int,
        global_batch_size_samples: int,
        micro_batch_size_samples: int,
        rank: int,
        world_size: int,
        group_by_modality_length: bool = False,
        index_cache_dir: str | None = None,
    ) -> None:
        """``group_by_modality_length``: LLaVA's SFT sampler (``SampleOrder``); ``index_cache_dir``:
        where shard member indexes are kept between ranks and jobs (``ShardReader``)."""
        per_rank, remainder = divmod(global_batch_size_samples, world_size)
        if remainder or per_rank % micro_batch_size_samples:
            raise ValueError(
                f"global batch {global_batch_size_samples} does not split into {world_size} ranks x "
                f"micro-batches of {micro_batch_size_samples}"
            )
        # Two blocks: a step window may straddle a block boundary.
        self.reader = ShardReader(location, manifest, capacity=2 * shuffle_block_shards, index_cache_dir=index_cache_dir)
        self.order = SampleOrder(
            manifest, seed, shuffle_block_shards,
            group_batch_size=global_batch_size_samples if group_by_modality_length else None,
            modality_lengths=self.modality_lengths,
        )
        self.global_batch_size_samples = global_batch_size_samples
        self.micro_batch_size_samples = micro_batch_size_samples
        self.samples_per_rank = per_rank
        self.rank = rank
        self.world_size = world_size
        self.steps_per_epoch = self.order.num_samples // global_batch_size_samples
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"dataset has {self.order.num_samples} samples, fewer than one global batch ({global_batch_size_samples})"
            )
        self._epoch_cache: tuple[int, np.ndarray] | None = None

    def modality_lengths(self, global_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each global sample index: whether it has an image, and its length proxy (the size
        of its metadata JSON in bytes: captions and conversations dominate it; upstream counts words).
        Read from the shards' member indexes (tar headers), not from the samples."""
        has_image = np.zeros(len(global_indices), dtype=bool)
        lengths = np.zeros(len(global_indices), dtype=np.int64)
        for position, global_index in enumerate(global_indices):
            shard_index, item_index = self.order.locate(int(global_index))
            _, span = self.reader.index(shard_index)[item_index]
            has_image[position], lengths[position] = span.has_image, span.meta_size
        return has_image, lengths

    def position_after_steps(self, completed_steps: int) -> LoaderPosition:
        """The position after ``completed_steps`` optimizer steps from the start of the run."""
        epoch, step_in_epoch = divmod(completed_steps, self.steps_per_epoch)
        return LoaderPosition(epoch=epoch, sample_offset=step_in_epoch * self.global_batch_size_samples)

    def completed_steps_at(self, position: LoaderPosition) -> int:
        if position.sample_offset % self.global_batch_size_samples:
            raise ValueError(
                f"saved loader position {position} is not on a global-batch boundary of "
                f"{self.global_batch_size_samples}: the checkpoint was written with another batch size"
            )
        return position.epoch * self.steps_per_epoch + position.sample_offset // self.global_batch_size_samples

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            self._epoch_cache = (epoch, self.order.epoch_order(epoch))
        return self._epoch_cache[1]

    def step_batch(self, position: LoaderPosition) -> StepBatch:
        """This rank's micro-batches for the step that starts at ``position``."""
        if position.sample_offset + self.global_batch_size_samples > self.order.num_samples:
            raise ValueError(f"position {position} is past the last full global batch of the epoch")
        window = self._epoch_order(position.epoch)[
            position.sample_offset : position.sample_offset + self.global_batch_size_samples
        ]
        mine = window[self.rank * self.samples_per_rank : (self.rank + 1) * self.samples_per_rank]
        micro_batches = []
        for start in range(0, len(mine), self.micro_batch_size_samples):
            samples = [self.reader.sample(*self.order.locate(int(i))) for i in mine[start : start + self.micro_batch_size_samples]]
            micro_batches.append(MicroBatch(keys=[s.key for s in samples], samples=samples))
        completed = self.completed_steps_at(position) + 1
        return StepBatch(step=completed, micro_batches=micro_batches, position_after=self.position_after_steps(completed))

    def iter_steps(self, start: LoaderPosition, total_steps: int) -> Iterator[StepBatch]:
        """Step batches from ``start`` up to and including step ``total_steps``."""
        position = start
        while self.completed_steps_at(position) < total_steps:
            batch = self.step_batch(position)
            yield batch
            position = batch.position_after


# ---- steps prepared ahead (loader workers) ----------------------------------------------------


@dataclass(frozen=True)
class PreparedMicroBatch:
    """One micro-batch ready for the model: its sample keys and the collated tensors."""

    keys: list[str]
    batch: dict[str, Any]


@dataclass(frozen=True)
class PreparedStep:
    """One rank's micro-batches of one optimizer step, collated, and the loader position after it."""

    step: int
    micro_batches: list[PreparedMicroBatch]
    position_after: LoaderPosition


class _StepDataset:
    """Step ``first_step + i + 1`` as item ``i``: read, decoded and collated (in a loader worker)."""

    def __init__(self, loader: "ResumableShardLoader", collate, first_step: int, total_steps: int) -> None:
        self.loader, self.collate = loader, collate
        self.first_step, self.total_steps = first_step, total_steps

    def __len__(self) -> int:
        return max(0, self.total_steps - self.first_step)

    def __getitem__(self, index: int) -> dict[str, Any]:
        step_batch = self.loader.step_batch(self.loader.position_after_steps(self.first_step + index))
        # Plain containers, so that the DataLoader pins every tensor in them.
        return {
            "step": step_batch.step,
            "keys": [micro.keys for micro in step_batch.micro_batches],
            "batches": [self.collate(micro.samples) for micro in step_batch.micro_batches],
            "position_after": step_batch.position_after.to_json(),
        }


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """In a loader worker: SIGTERM/SIGUSR1/SIGINT are for the training process, which flushes a
    checkpoint; a scheduler that signals every process of the job (SLURM) must not kill the
    workers under it (the DataLoader would raise in the middle of the save). They end with their
    parent."""
    import signal

    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def prepared_steps(
    loader: "ResumableShardLoader",
    collate,
    start_step: int,
    total_steps: int,
    workers: int = 0,
    prefetch_steps: int = 2,
    pin_memory: bool = False,
) -> Iterator[PreparedStep]:
    """Steps ``start_step + 1 .. total_steps`` with their micro-batches collated by ``collate``.

    ``workers`` > 0 prepares them in that many forked processes, each ``prefetch_steps`` steps
    ahead, delivered in step order (the result is the same as with 0 workers); ``pin_memory``
    pins the tensors for asynchronous host-to-GPU copies.
    """
    dataset = _StepDataset(loader, collate, start_step, total_steps)
    if workers == 0:
        items: Iterator[dict[str, Any]] = (dataset[index] for index in range(len(dataset)))
    else:
        import torch.utils.data

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the workers are forked after the tokenizer ran
        items = iter(torch.utils.data.DataLoader(
            dataset, batch_size=None, shuffle=False, num_workers=workers, prefetch_factor=prefetch_steps,
            pin_memory=pin_memory, worker_init_fn=ignore_stop_signals, multiprocessing_context="fork",
        ))
    for item in items:
        yield PreparedStep(
            step=int(item["step"]),
            micro_batches=[PreparedMicroBatch(keys=list(keys), batch=batch) for keys, batch in zip(item["keys"], item["batches"])],
            position_after=LoaderPosition.from_json(item["position_after"]),
        )


# ---- sample -> processor input ---------------------------------------------------------------

DEFAULT_SFT_PROMPT = "Describe the image briefly."


def decode_image(sample: ShardSample):
    """The sample's image as an RGB PIL image, or None for a text-only sample."""
    if sample.image_bytes is None:
        return None
    from PIL import Image

    with Image.open(io.BytesIO(sample.image_bytes)) as image:
        return image.convert("RGB")


def caption_text(sample: ShardSample) -> str:
    """Text a caption stage trains on: the caption, or the assistant turns when there is none."""
    if sample.caption:
        return sample.caption
    if sample.conversations:
        return "\n".join(turn["value"] for turn in sample.conversations if turn.get("from") == "gpt")
    raise DatasetIntegrityError(f"sample {sample.key} has neither a caption nor conversations")


def conversation_turns(sample: ShardSample) -> list[dict[str, str]]:
    """Conversations for SFT; a caption-only sample becomes one describe-the-image exchange."""
    if sample.conversations:
        return sample.conversations
    if sample.caption:
        prompt = ("<image>\n" if sample.image_bytes is not None else "") + DEFAULT_SFT_PROMPT
        return [{"from": "human", "value": prompt}, {"from": "gpt", "value": sample.caption}]
    raise DatasetIntegrityError(f"sample {sample.key} has neither conversations nor a caption")


def plain_text(sample: ShardSample) -> str:
    """All text of a sample without image placeholders (the base-LLM bootstrap corpus)."""
    if sample.conversations:
        return "\n".join(turn["value"].replace("<image>", "").strip() for turn in sample.conversations)
    return caption_text(sample)


def processor_inputs(samples: list[ShardSample], template: str) -> list[dict[str, Any]]:
    """Samples in the form ``EveProcessor`` takes for ``template`` ("plain" or "vicuna_v1")."""
    if template == "plain":
        return [{"key": s.key, "image": decode_image(s), "caption": caption_text(s)} for s in samples]
    if template == "vicuna_v1":
        return [{"key": s.key, "image": decode_image(s), "conversations": conversation_turns(s)} for s in samples]
    raise ValueError(f"unknown template {template!r}")


__all__ = [
    "LoaderPosition",
    "MicroBatch",
    "PreparedMicroBatch",
    "PreparedStep",
    "ShardReader",
    "ignore_stop_signals",
    "prepared_steps",
    "scan_shard_index",
    "ResumableShardLoader",
    "SampleOrder",
    "StepBatch",
    "caption_text",
    "conversation_turns",
    "decode_image",
    "plain_text",
    "processor_inputs",
]
