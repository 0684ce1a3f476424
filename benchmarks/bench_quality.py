"""Caption quality gate throughput: captions checked per second (metrics table + GX validation).

    .venv/bin/python benchmarks/bench_quality.py            # 1,000,000 captions
    .venv/bin/python benchmarks/bench_quality.py --n 100000

Synthetic captions (seeded): detailed one-paragraph sentences from a 2,000-word vocabulary, with
~1 % each of planted loops, truncations, boilerplate openings, markup and exact duplicates. The
script prints each phase's rate and its share of the total, measured in the same run, and checks
that the planted defects were found.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def synthetic_captions(count: int, seed: int = 0) -> tuple[list[str], dict[str, int]]:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocabulary = np.array(
        ["".join(rng.choice(letters, size=int(rng.integers(3, 10)))) for _ in range(2000)], dtype=object
    )
    lengths = rng.integers(12, 40, size=count)
    words = rng.choice(vocabulary, size=int(lengths.sum()))
    captions, start = [], 0
    for length in lengths:
        captions.append("A " + " ".join(words[start : start + length]) + ".")
        start += length
    planted = {"loop": 0, "truncated": 0, "boilerplate": 0, "markup": 0, "duplicate": 0}
    kinds = list(planted)
    for index in rng.choice(count, size=count // 20, replace=False):
        kind = kinds[index % len(kinds)]
        planted[kind] += 1
        if kind == "loop":
            captions[index] = "A red bus on a road, " * 5 + "end."
        elif kind == "truncated":
            captions[index] = captions[index].rstrip(".") + " and the"
        elif kind == "boilerplate":
            captions[index] = "The image shows " + captions[index][2:]
        elif kind == "markup":
            captions[index] = "<p>" + captions[index] + "</p>"
        else:
            captions[index] = captions[(index + 1) % count]
    return captions, planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="number of captions")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="also time the metrics with this many processes (1: skip)")
    args = parser.parse_args()

    from tasks.quality.config import CaptionGateThresholds
    from tasks.quality.metrics import compute_caption_metrics
    from tasks.quality.suites import build_caption_suite
    from tasks.quality.validate import decide

    started = time.perf_counter()
    captions, planted = synthetic_captions(args.n)
    keys = [f"k{index:08d}" for index in range(args.n)]
    print(f"generated {args.n:,} captions in {time.perf_counter() - started:.1f} s; planted {planted}")

    thresholds = CaptionGateThresholds()
    t0 = time.perf_counter()
    table = compute_caption_metrics(keys, captions, thresholds.near_duplicate_jaccard)
    t1 = time.perf_counter()
    decision = decide(table, build_caption_suite(thresholds), thresholds.max_filtered_fraction)
    t2 = time.perf_counter()
    parallel_seconds = None
    if args.workers > 1:
        parallel = compute_caption_metrics(keys, captions, thresholds.near_duplicate_jaccard, workers=args.workers)
        parallel_seconds = time.perf_counter() - t2
        assert parallel.equals(table), "worker processes changed the metrics table"

    metrics_seconds, gx_seconds, total = t1 - t0, t2 - t1, t2 - t0
    filtered = decision.filtered_reason.value_counts().to_dict()
    print(f"{'phase':<34}{'seconds':>10}{'captions/s':>14}{'share':>8}")
    for name, seconds in [("metrics table (1 process)", metrics_seconds), ("GX validation + decision", gx_seconds),
                          ("total", total)]:
        print(f"{name:<34}{seconds:>10.2f}{args.n / seconds:>14,.0f}{seconds / total:>8.0%}")
    print(f"GX / metrics time ratio: {gx_seconds / metrics_seconds:.2f}")
    if parallel_seconds is not None:
        print(f"{f'metrics table ({args.workers} processes)':<34}{parallel_seconds:>10.2f}"
              f"{args.n / parallel_seconds:>14,.0f}   speed-up x{metrics_seconds / parallel_seconds:.2f} (same table)")
    print(f"filtered by reason: {filtered}; gate passed: {decision.passed}")
    found = {
        "loop": filtered.get("repetitive_trigrams", 0) + filtered.get("repeated_ngram", 0),
        "truncated": filtered.get("incomplete_sentence", 0),
        "boilerplate": filtered.get("boilerplate_opening", 0),
        "markup": filtered.get("markup", 0),
    }
    for kind, count in found.items():
        # Loops are also exact duplicates of each other, so most are filtered as duplicates.
        status = "ok" if count >= planted[kind] or kind == "loop" else "MISSED"
        print(f"  planted {kind:<12}{planted[kind]:>8,}  filtered {count:>8,}  {status}")


if __name__ == "__main__":
    main()
