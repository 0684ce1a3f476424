"""Caption quality gate throughput: captions checked per second (metrics table + GX validation).

    .venv/bin/python benchmarks/bench_quality.py            # 1,000,000 captions
    .venv/bin/python benchmarks/bench_quality.py --n 100000
    .venv/bin/python benchmarks/bench_quality.py --calibrate  # both profiles on real human captions

Synthetic captions (seeded): detailed one-paragraph sentences from a 2,000-word vocabulary, with
~1 % each of planted loops, truncations, boilerplate openings, markup and exact duplicates. The
script prints each phase's rate and its share of the total, measured in the same run, and checks
that the planted defects were found.

``--calibrate`` runs both caption profiles on real human-written captions instead: the Tux Paint
stamp descriptions (Debian ``tuxpaint-stamps-default``: 952 one-line captions of photos and
drawings), the titles and descriptions their authors gave the OpenClipart drawings (Debian
``openclipart-svg``; one record per distinct drawing) and the committed public-domain fixture
(``tests/fixtures/real_data``). Each image is identified by its file's sha256, so the same file
listed twice is a duplicate sample and the same caption on two files a cross-image repeat. It
prints, per set and profile, the verdict, how many captions each rule filtered and examples.
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


def real_caption_sets() -> dict[str, tuple[list[str], list[str | None]]]:
    """name -> (captions, image ids) for every real set that is installed here."""
    import hashlib
    import json
    import re
    from pathlib import Path

    def file_id(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    sets: dict[str, tuple[list[str], list[str | None]]] = {}
    stamps = Path("/usr/share/tuxpaint/stamps")
    if stamps.is_dir():
        captions, ids = [], []
        for text in sorted(stamps.rglob("*.txt")):
            image = next((text.with_suffix(ext) for ext in (".png", ".svg") if text.with_suffix(ext).exists()), None)
            captions.append(text.read_text(encoding="utf-8").split("\n", 1)[0])
            ids.append(file_id(image) if image else None)
        sets["tuxpaint stamp descriptions"] = (captions, ids)
    clipart = Path("/usr/share/openclipart/svg")
    if clipart.is_dir():
        titles, descriptions, seen = ([], []), ([], []), set()
        for svg in sorted(clipart.rglob("*.svg")):
            identity = file_id(svg)
            if identity in seen:
                continue
            seen.add(identity)
            text = svg.read_text(encoding="utf-8", errors="replace")
            for pattern, (captions, ids) in ((r"<dc:title>([^<]*)</dc:title>", titles),
                                             (r"<dc:description>([^<]*)</dc:description>", descriptions)):
                match = re.search(pattern, text)
                if match and match.group(1).strip():
                    captions.append(match.group(1).strip())
                    ids.append(identity)
        sets["openclipart titles"] = titles
        sets["openclipart descriptions"] = descriptions
    fixture = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "real_data" / "openclipart_captions.jsonl"
    records = [json.loads(line) for line in fixture.read_text(encoding="utf-8").splitlines()]
    sets["fixture: openclipart titles"] = ([r["title"] for r in records if r["title"]],
                                           [r["path"] for r in records if r["title"]])
    return sets


def calibrate() -> None:
    from tasks.quality.config import CAPTION_PROFILE_DEFAULTS, CaptionGateThresholds
    from tasks.quality.metrics import compute_caption_metrics
    from tasks.quality.suites import build_caption_suite
    from tasks.quality.validate import decide

    for name, (captions, ids) in real_caption_sets().items():
        for profile in CAPTION_PROFILE_DEFAULTS:
            thresholds = CaptionGateThresholds(profile=profile)
            keys = [f"k{index}" for index in range(len(captions))]
            table = compute_caption_metrics(keys, captions, thresholds.near_duplicate_jaccard, image_ids=ids)
            decision = decide(table, build_caption_suite(thresholds), thresholds.max_filtered_fraction)
            reasons = decision.filtered_reason.fillna("")
            counts = reasons[reasons != ""].value_counts().to_dict()
            print(f"{name} [{profile}]: {len(captions)} captions, mean {table['num_words'].mean():.1f} words, "
                  f"{'PASSED' if decision.passed else 'FAILED'}; filtered {sum(counts.values())} "
                  f"({sum(counts.values()) / len(captions):.1%}) {counts}")
            for reason in decision.reasons:
                print(f"    fails: {reason}")
            for rule in counts:
                examples = [captions[i][:70] for i in range(len(captions)) if reasons.iloc[i] == rule][:3]
                print(f"    {rule}: {examples}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="number of captions")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="also time the metrics with this many processes (1: skip)")
    parser.add_argument("--calibrate", action="store_true", help="run both profiles on real human captions")
    args = parser.parse_args()
    if args.calibrate:
        calibrate()
        return

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
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as docs_root:
        with_docs = decide(table, build_caption_suite(thresholds), thresholds.max_filtered_fraction,
                           data_docs_root=Path(docs_root), run_name="bench")
        docs_seconds = time.perf_counter() - t2
    assert with_docs.passed == decision.passed and with_docs.filtered_reason.equals(decision.filtered_reason)
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
    print(f"{'GX + stores + Data Docs (same decision)':<34}{docs_seconds:>10.2f}{args.n / docs_seconds:>14,.0f}"
          f"   x{docs_seconds / gx_seconds:.2f} the in-memory validation")
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
