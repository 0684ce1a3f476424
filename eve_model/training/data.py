"""Deterministic, resumable, rank-sharded sample order over an ``eve_model.shards`` dataset.

Order. For epoch ``e`` the order is a pure function of ``(seed, e)``: the shard list is permuted,
cut into blocks of ``shuffle_block_shards`` shards, and the samples of each block are permuted.
Block-local shuffling keeps memory bounded (a rank holds at most two blocks of decoded shards)
while still mixing samples across shards; at toy scale (one block) it is a full shuffle.

Sharding over ranks. Step ``s`` (1-based) of epoch ``e`` consumes the global window
``order[(s' ) * G : (s' + 1) * G]`` with ``s' = (s - 1) mod steps_per_epoch`` and ``G`` the global
batch; rank ``r`` takes the contiguous slice ``[r * G/W, (r + 1) * G/W)`` of the window and splits it
into micro-batches. The trailing ``N mod G`` samples of an epoch are dropped.

Resume. The loader position saved with every checkpoint is ``(epoch, sample_offset)`` in samples,
not per-rank cursors, so a run resumes exactly (no sample seen twice, none skipped) even on a
different world size as long as the global batch is unchanged.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from eve_model.shards import DatasetIntegrityError, DatasetManifest, ShardSample, read_shard


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

    def __init__(self, manifest: DatasetManifest, seed: int, shuffle_block_shards: int) -> None:
        self.manifest = manifest
        self.seed = seed
        self.shuffle_block_shards = shuffle_block_shards
        counts = np.array([shard.num_items for shard in manifest.shards], dtype=np.int64)
        self.shard_starts = np.concatenate([[0], np.cumsum(counts)])
        self.num_samples = int(self.shard_starts[-1])

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Global sample indices of ``epoch`` in consumption order; shape (num_samples,)."""
        rng = np.random.default_rng([self.seed, epoch])
        shard_order = rng.permutation(len(self.manifest.shards))
        pieces = []
        for block_start in range(0, len(shard_order), self.shuffle_block_shards):
            block = shard_order[block_start : block_start + self.shuffle_block_shards]
            indices = np.concatenate(
                [np.arange(self.shard_starts[i], self.shard_starts[i + 1]) for i in block]
            )
            pieces.append(indices[rng.permutation(len(indices))])
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)

    def locate(self, global_index: int) -> tuple[int, int]:
        """(shard index, index within the shard) of a global sample index."""
        shard_index = int(np.searchsorted(self.shard_starts, global_index, side="right") - 1)
        return shard_index, int(global_index - self.shard_starts[shard_index])


class _ShardCache:
    """The last few decoded shards (LRU); reading a shard verifies its hash against the manifest."""

    def __init__(self, location: str, manifest: DatasetManifest, capacity: int) -> None:
        self.location = location
        self.manifest = manifest
        self.capacity = capacity
        self._shards: OrderedDict[int, list[ShardSample]] = OrderedDict()

    def sample(self, shard_index: int, item_index: int) -> ShardSample:
        if shard_index not in self._shards:
            shard = self.manifest.shards[shard_index]
            samples = read_shard(self.location, shard, verify=True)
            if len(samples) != shard.num_items:
                raise DatasetIntegrityError(
                    f"{self.location}/{shard.name}: holds {len(samples)} samples, manifest says {shard.num_items}"
                )
            self._shards[shard_index] = samples
            while len(self._shards) > self.capacity:
                self._shards.popitem(last=False)
        self._shards.move_to_end(shard_index)
        return self._shards[shard_index][item_index]


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
    ) -> None:
        per_rank, remainder = divmod(global_batch_size_samples, world_size)
        if remainder or per_rank % micro_batch_size_samples:
            raise ValueError(
                f"global batch {global_batch_size_samples} does not split into {world_size} ranks x "
                f"micro-batches of {micro_batch_size_samples}"
            )
        self.order = SampleOrder(manifest, seed, shuffle_block_shards)
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
        # Two blocks: a step window may straddle a block boundary.
        self._cache = _ShardCache(location, manifest, capacity=2 * shuffle_block_shards)
        self._epoch_cache: tuple[int, np.ndarray] | None = None

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
            samples = [self._cache.sample(*self.order.locate(int(i))) for i in mine[start : start + self.micro_batch_size_samples]]
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
    "ResumableShardLoader",
    "SampleOrder",
    "StepBatch",
    "caption_text",
    "conversation_turns",
    "decode_image",
    "plain_text",
    "processor_inputs",
]
