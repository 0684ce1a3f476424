"""Training throughput of the tiny preset on this CPU: samples/s and tokens/s per stage, 1 vs 2 ranks.

    .venv/bin/python benchmarks/bench_training.py [--steps 8] [--stages base-llm 1 2 3]

Each stage runs twice in this one invocation, side by side, on the same data and global batch
(4 samples): once in one process, once as 2 gloo ranks under torchrun. The first two steps are
warm-up and left out; the medians of the rest are compared. On a 2-core machine the ratio says how
much of the second core the data-parallel run turns into throughput (gloo all-reduce, DeepSpeed
bookkeeping and contention from other work on the machine all count against it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from eve_model.training.config import tiny_stage_config  # noqa: E402
from tests.eve_model.training_datasets import subprocess_env, torchrun_command, write_tiny_dataset  # noqa: E402

WARMUP_STEPS = 2


def _run(config, workdir: Path, home: Path, nproc: int) -> list[dict]:
    path = config.write(workdir / f"{config.run_name}.json")
    result = subprocess.run(torchrun_command(path, nproc), env=subprocess_env(home), cwd=REPO_ROOT,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{config.run_name} failed:\n{result.stderr[-4000:]}")
    return [json.loads(line) for line in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--stages", nargs="+", default=["base-llm", "1", "2", "3"])
    args = parser.parse_args()
    if args.steps <= WARMUP_STEPS:
        raise SystemExit(f"--steps must exceed the {WARMUP_STEPS} warm-up steps")

    with tempfile.TemporaryDirectory(prefix="eve-bench-") as tmp:
        workdir = Path(tmp)
        home = workdir / "home"
        home.mkdir()
        manifest = write_tiny_dataset(workdir / "ds", num_samples=64, items_per_shard=16)
        previous_final: str | None = None
        rows = []
        for stage in args.stages:
            results = {}
            for nproc in (1, 2):
                config = tiny_stage_config(
                    stage, str(workdir / f"stage-{stage}-np{nproc}"), str(workdir / "ds"), manifest.dataset_hash,
                    init_checkpoint=previous_final, global_batch_size_samples=4, micro_batch_size_samples=1,
                    max_steps=args.steps, wandb_mode="disabled", run_name=f"bench-{stage}-np{nproc}",
                )
                metrics = _run(config, workdir, home, nproc)[WARMUP_STEPS:]
                results[nproc] = (
                    statistics.median(m["samples_per_second"] for m in metrics),
                    statistics.median(m["tokens_per_second"] for m in metrics),
                )
                print(f"stage {stage:>8} ranks {nproc}: {results[nproc][0]:8.2f} samples/s {results[nproc][1]:9.1f} tokens/s", flush=True)
            # The next stage starts from the 2-rank output (both runs see the same data and seed).
            previous_final = str(workdir / f"stage-{stage}-np2" / "final")
            rows.append((stage, results))

    print("\nstage     samples/s 1r  samples/s 2r  ratio   tokens/s 1r  tokens/s 2r  ratio")
    for stage, results in rows:
        (s1, t1), (s2, t2) = results[1], results[2]
        print(f"{stage:>8}  {s1:12.2f}  {s2:12.2f}  {s2 / s1:5.2f}  {t1:11.1f}  {t2:11.1f}  {t2 / t1:5.2f}")
    print(f"\nload average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
