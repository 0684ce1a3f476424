"""Data pipeline throughput, measured side by side in one run (never a timed unit test).

    python benchmarks/bench_data.py                 # 5,000 synthetic images
    python benchmarks/bench_data.py --count 100000  # closer to a real shard's worth of files

Prints:
1. validation: images checked per second (open, header checks, full decode, mode, caption);
2. shard writing: items/s and MB/s of eve_model.shards.ShardWriter;
3. DVC add + push to a local directory remote: the same images stored as tar shards vs as
   individual files, each in a fresh DVC repository, and the ratio (why datasets are stored as shards).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eve_model.shards import ShardWriter  # noqa: E402
from tasks.data.demo_source import DemoDataConfig, render_scene, sample_scene  # noqa: E402
from tasks.data.sources import RawItem  # noqa: E402
from tasks.data.validate import ValidationConfig, validate_item  # noqa: E402


def make_images(count: int, seed: int) -> list[bytes]:
    """``count`` distinct PNG scenes (distinct bytes, so DVC cannot deduplicate them)."""
    rng = random.Random(seed)
    config = DemoDataConfig()
    images, seen = [], set()
    while len(images) < count:
        png = render_scene(sample_scene(rng, config))
        digest = hashlib.sha256(png).digest()
        if digest not in seen:
            seen.add(digest)
            images.append(png)
        if len(images) % 5000 == 0 and len(images):
            print(f"  generated {len(images)}/{count}", file=sys.stderr, flush=True)
    return images


def bench_validation(images: list[bytes]) -> tuple[float, list]:
    config = ValidationConfig.demo()
    started = time.perf_counter()
    samples = [validate_item(RawItem(f"img-{i:07d}", f"bench#{i}", png, f"{i}.png", "a caption"), config) for i, png in enumerate(images)]
    elapsed = time.perf_counter() - started
    return len(images) / elapsed, samples


def bench_shards(samples: list, out_dir: Path) -> tuple[float, float, float]:
    started = time.perf_counter()
    with ShardWriter(out_dir, max_items_per_shard=1000) as writer:
        writer.write_all(samples)
    elapsed = time.perf_counter() - started
    megabytes = sum(s.num_bytes for s in writer.manifest.shards) / 1e6
    return len(samples) / elapsed, megabytes / elapsed, elapsed


def dvc_add_push_seconds(work: Path, payload_dir_name: str, fill) -> float:
    """Fresh git+DVC repo with a local remote; time `dvc add` + `dvc push` of one directory."""
    dvc = str(Path(sys.executable).with_name("dvc"))
    work.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    subprocess.run([dvc, "init", "-q"], cwd=work, check=True)
    subprocess.run([dvc, "remote", "add", "-d", "-q", "bench", str(work.parent / f"{work.name}-remote")], cwd=work, check=True)
    fill(work / payload_dir_name)
    started = time.perf_counter()
    subprocess.run([dvc, "add", "-q", payload_dir_name], cwd=work, check=True)
    subprocess.run([dvc, "push", "-q"], cwd=work, check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=5000, help="number of images (default 5000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"generating {args.count} synthetic images ...", flush=True)
    images = make_images(args.count, args.seed)
    total_mb = sum(map(len, images)) / 1e6
    print(f"{args.count} images, {total_mb:.1f} MB encoded")

    per_second, samples = bench_validation(images)
    print(f"validation:    {per_second:10.0f} images/s")

    with tempfile.TemporaryDirectory(prefix="bench-data-") as scratch:
        scratch = Path(scratch)
        items_per_second, mb_per_second, _ = bench_shards(samples, scratch / "shards-only")
        print(f"shard writing: {items_per_second:10.0f} items/s  {mb_per_second:8.1f} MB/s")

        def fill_shards(target: Path) -> None:
            shutil.copytree(scratch / "shards-only", target)

        def fill_files(target: Path) -> None:
            target.mkdir(parents=True)
            for index, png in enumerate(images):
                (target / f"img-{index:07d}.png").write_bytes(png)

        shard_seconds = dvc_add_push_seconds(scratch / "repo-shards", "dataset", fill_shards)
        file_seconds = dvc_add_push_seconds(scratch / "repo-files", "dataset", fill_files)
        num_shards = len(list((scratch / "shards-only" / "shards").glob("*.tar")))
        print(f"dvc add+push:  shards ({num_shards} tars) {shard_seconds:7.2f} s | "
              f"individual files ({args.count}) {file_seconds:7.2f} s | files/shards = {file_seconds / shard_seconds:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
