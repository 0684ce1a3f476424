"""Per-rank reads and the data-loading share of a step, measured side by side in one run.

    python benchmarks/bench_rank_reads.py                  # 768 JPEG samples (~100 KB each) in 12 shards
    python benchmarks/bench_rank_reads.py --samples 3072   # more shards

Prints:
1. bytes each rank reads for one epoch at world sizes 1, 2 and 4 (``eve_model.training.data``:
   a member index from the tar headers, then one ranged read per sample member), as a share of the
   dataset and against the ideal 1/world; next to it what the previous loader read (every rank
   every shard in full: the whole dataset per rank). Header scans are counted, once without and once
   with the shared index cache.
2. the share of a step spent waiting for data, with the batch prepared on the training thread
   (0 workers) and by 2 loader workers prefetching 2 steps, for a fixed compute time per step. The
   compute stand-in sleeps: on a GPU the host thread waits for kernels the same way, leaving the
   CPU to the loader. Collation is the real EVE processor (decode, resize, tokenise, splice).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from eve_model.shards import ShardSample, ShardWriter  # noqa: E402
from eve_model.training.data import LoaderPosition, ResumableShardLoader, prepared_steps, processor_inputs  # noqa: E402


def write_dataset(directory: Path, samples: int, per_shard: int, side_px: int, seed: int):
    """JPEG photos-like noise (~100 KB at 384 px), a caption and a conversation each, image_sha256 in the metadata."""
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    with ShardWriter(directory, max_items_per_shard=per_shard) as writer:
        for index in range(samples):
            pixels = rng.integers(0, 255, size=(side_px // 4, side_px // 4, 3), dtype=np.uint8)
            image = Image.fromarray(pixels).resize((side_px, side_px)).filter(ImageFilter.GaussianBlur(1))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=92)
            data = buffer.getvalue()
            meta = {
                "caption": f"sample {index}: a blurred field of coloured noise",
                "conversations": [{"from": "human", "value": "<image>\nWhat is shown?"},
                                  {"from": "gpt", "value": f"Coloured noise number {index}."}],
                "image_sha256": hashlib.sha256(data).hexdigest(), "width": side_px, "height": side_px,
            }
            writer.write(ShardSample(key=f"s{index:06d}", meta=meta, image_bytes=data, image_ext="jpg"))
    return writer.manifest


def loader(directory: Path, manifest, rank: int, world: int, global_batch: int, micro: int, cache_dir: str | None):
    return ResumableShardLoader(str(directory), manifest, seed=0, shuffle_block_shards=4,
                                global_batch_size_samples=global_batch, micro_batch_size_samples=micro,
                                rank=rank, world_size=world, index_cache_dir=cache_dir)


def bytes_per_rank(directory: Path, manifest, global_batch: int, micro: int, cache_dir: str | None) -> None:
    dataset_bytes = sum(shard.num_bytes for shard in manifest.shards)
    steps = manifest.num_items // global_batch
    print(f"{'world':>5} {'rank':>4} {'MB read':>9} {'of dataset':>10} {'ideal 1/world':>13} {'ratio':>6} {'previous loader':>15}")
    for world in (1, 2, 4):
        for rank in range(world):
            rank_loader = loader(directory, manifest, rank, world, global_batch, micro, cache_dir)
            for _ in rank_loader.iter_steps(LoaderPosition(0, 0), steps):
                pass
            share = rank_loader.reader.bytes_read / dataset_bytes
            print(f"{world:>5} {rank:>4} {rank_loader.reader.bytes_read / 1e6:>9.1f} {share:>10.3f} {1 / world:>13.3f} "
                  f"{share * world:>6.2f} {1.0:>15.3f}")


def data_wait_share(directory: Path, manifest, global_batch: int, micro: int, compute_seconds: float, steps: int) -> None:
    from eve_model.configuration_eve import EveConfig
    from eve_model.processing_eve import EveProcessor

    processor = EveProcessor.from_eve_config(EveConfig.tiny(image_max_side=224), max_length=512)

    def collate(samples):
        return dict(processor(processor_inputs(samples, "vicuna_v1"), "vicuna_v1"))

    print(f"compute per step (stand-in): {compute_seconds * 1000:.0f} ms; {steps} steps; world 2, rank 0")
    print(f"{'loader workers':>14} {'data wait/step':>15} {'share of step':>14}")
    for workers in (0, 2):
        rank_loader = loader(directory, manifest, 0, 2, global_batch, micro, None)
        waited, started = 0.0, time.perf_counter()
        iterator = prepared_steps(rank_loader, collate, 0, steps, workers=workers, prefetch_steps=2)
        for _ in range(steps):
            before = time.perf_counter()
            next(iterator)
            waited += time.perf_counter() - before
            time.sleep(compute_seconds)
        total = time.perf_counter() - started
        print(f"{workers:>14} {waited / steps * 1000:>12.0f} ms {waited / total:>14.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=768)
    parser.add_argument("--per-shard", type=int, default=64)
    parser.add_argument("--side", type=int, default=384, help="image side in pixels")
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--compute-ms", type=float, default=400.0)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        started = time.perf_counter()
        manifest = write_dataset(root / "ds", args.samples, args.per_shard, args.side, seed=0)
        dataset_mb = sum(s.num_bytes for s in manifest.shards) / 1e6
        print(f"dataset: {manifest.num_items} samples, {len(manifest.shards)} shards, {dataset_mb:.1f} MB "
              f"(written in {time.perf_counter() - started:.1f} s)\n")
        print("1a. bytes read per rank for one epoch, every rank scanning the tar headers itself")
        bytes_per_rank(root / "ds", manifest, args.global_batch, args.micro_batch, None)
        cache = str(root / "index-cache")
        loader(root / "ds", manifest, 0, 1, args.global_batch, args.micro_batch, cache)  # warm nothing: built lazily
        print("\n1b. the same with the shared index cache (built by the first reader of each shard)")
        bytes_per_rank(root / "ds", manifest, args.global_batch, args.micro_batch, cache)
        print("\n2. share of a step spent waiting for its data")
        data_wait_share(root / "ds", manifest, args.global_batch, args.micro_batch, args.compute_ms / 1000, args.steps)


if __name__ == "__main__":
    main()
