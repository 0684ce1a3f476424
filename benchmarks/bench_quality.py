"""Caption quality gate throughput, today's gate against the row-wise one it replaced, side by side.

    .venv/bin/python benchmarks/bench_quality.py                    # 1,000,000 captions, both gates
    .venv/bin/python benchmarks/bench_quality.py --n 100000
    .venv/bin/python benchmarks/bench_quality.py --baseline-sample 200000  # the old gate on a sample only
    .venv/bin/python benchmarks/bench_quality.py --calibrate        # both profiles on real human captions

A gate run is the metrics table plus the GX validation and decision, in one process (per core).
"Before" is the row-wise implementation as it was at commit ``BASELINE_COMMIT``: its
``tasks/quality/metrics.py``, ``near_duplicates.py`` and ``validate.py`` are read from git history
and imported at run time (nothing copied, so nothing can drift); this needs the repository's
history (not a shallow clone). Both gates run on the same captions in the same process, one after
the other; the script checks that both build the identical metrics table and filter the same rows,
and prints the throughput of each phase and the ratio.

Synthetic captions (seeded): detailed one-paragraph sentences from a 2,000-word vocabulary; 0.5 %
carry a non-ASCII word (they take the row-wise path of the new gate); about 1 % each of planted
loops (each a different phrase repeated, so not duplicates of each other), truncations,
boilerplate openings, markup, duplicate samples (the same image and caption again) and captions
repeated for another image. The defect check requires every planted defect to be filtered under
its own rule, with exact counts, and no clean caption to be filtered.

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
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BASELINE_COMMIT = "f1b9ee7dd7de6e77950e824a37d252e5c694e0d5"
"""The platform before the columnar caption metrics (row-wise metrics, GX on the whole table)."""

PLANTED_RULE = {
    "loop": "repetitive_trigrams",
    "truncated": "incomplete_sentence",
    "boilerplate": "boilerplate_opening",
    "markup": "markup",
    "duplicate": "exact_duplicate",
    "repeat": "cross_image_repeat",
}
"""Each planted defect and the one rule that must filter it (the first it breaks, in suite order)."""


def synthetic_captions(count: int, seed: int = 0) -> tuple[list[str], list[str], dict[str, int]]:
    """(captions, image ids, planted defects per kind); see the module docstring."""
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
    images = [f"img{index:09d}" for index in range(count)]
    for index in rng.choice(count, size=count // 200, replace=False):  # clean, but not ASCII
        captions[index] = captions[index].replace(" ", " café ", 1)

    kinds = list(PLANTED_RULE)
    per_kind = count // 100
    chosen = rng.choice(count, size=per_kind * (len(kinds) + 1), replace=False)
    targets, sources = chosen[: per_kind * len(kinds)], chosen[per_kind * len(kinds) :]
    planted = dict.fromkeys(kinds, 0)
    for number, index in enumerate(targets.tolist()):
        kind = kinds[number % len(kinds)]
        planted[kind] += 1
        if kind == "loop":
            phrase = " ".join(rng.choice(vocabulary, size=int(rng.integers(4, 8))))
            captions[index] = "A " + " ".join([phrase] * 4) + " end."
        elif kind == "truncated":
            captions[index] = captions[index].rstrip(".") + " and the"
        elif kind == "boilerplate":
            captions[index] = "The image shows " + captions[index][2:]
        elif kind == "markup":
            captions[index] = "<p>" + captions[index] + "</p>"
        else:  # a copy of a clean caption: of the same image (duplicate) or of another (repeat)
            source = int(sources[number // len(kinds)])
            captions[index] = captions[source]
            if kind == "duplicate":
                images[index] = images[source]
    return captions, images, planted


def baseline_modules(commit: str = BASELINE_COMMIT) -> tuple[types.ModuleType, types.ModuleType]:
    """(metrics, validate) of the platform at ``commit``, imported from git history."""

    def module(path: str, name: str) -> types.ModuleType:
        try:
            source = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:{path}"],
                                    capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError) as error:
            raise SystemExit(f"cannot read {path} at {commit[:12]} from git history ({error}); "
                             "the comparison needs a clone with history (git fetch --unshallow)") from error
        loaded = types.ModuleType(name)
        loaded.__file__ = f"{commit[:12]}:{path}"
        sys.modules[name] = loaded  # dataclasses look their module up there
        exec(compile(source, loaded.__file__, "exec"), loaded.__dict__)  # noqa: S102 (our own history)
        return loaded

    near_duplicates = module("tasks/quality/near_duplicates.py", "baseline_near_duplicates")
    # The old metrics module imports its near-duplicate search by name: give it the old one.
    current = sys.modules.get("tasks.quality.near_duplicates")
    sys.modules["tasks.quality.near_duplicates"] = near_duplicates
    try:
        metrics = module("tasks/quality/metrics.py", "baseline_metrics")
    finally:
        if current is None:
            del sys.modules["tasks.quality.near_duplicates"]
        else:
            sys.modules["tasks.quality.near_duplicates"] = current
    return metrics, module("tasks/quality/validate.py", "baseline_validate")


def real_caption_sets() -> dict[str, tuple[list[str], list[str | None]]]:
    """name -> (captions, image ids) for every real set that is installed here."""
    import hashlib
    import json
    import re

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
    fixture = REPO / "tests" / "fixtures" / "real_data" / "openclipart_captions.jsonl"
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


def time_gate(metrics, validate, keys, captions, images, thresholds, suite) -> tuple[float, float, float, object, object]:
    """(metrics CPU seconds, GX validation + decision CPU seconds, wall seconds, table, decision) of
    one gate implementation. CPU time of this process, not wall time: on a machine shared with other
    work, wall time counts the time others had the core; CPU time is what the gate costs per core."""
    wall, started = time.perf_counter(), time.process_time()
    table = metrics.compute_caption_metrics(keys, captions, thresholds.near_duplicate_jaccard, image_ids=images)
    computed = time.process_time()
    decision = validate.decide(table, suite, thresholds.max_filtered_fraction)
    return computed - started, time.process_time() - computed, time.perf_counter() - wall, table, decision


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="number of captions")
    parser.add_argument("--baseline-sample", type=int, default=None,
                        help="run the old gate on the first N captions only (default: all of them)")
    parser.add_argument("--workers", type=int, default=1,
                        help="also time the new metrics with this many processes (1: skip)")
    parser.add_argument("--calibrate", action="store_true", help="run both profiles on real human captions")
    args = parser.parse_args()
    if args.calibrate:
        calibrate()
        return 0

    import tempfile

    import pyarrow

    pyarrow.set_cpu_count(1)  # per core: no arrow kernel may use a second thread
    import tasks.quality.metrics as metrics
    import tasks.quality.validate as validate
    from tasks.quality.config import CaptionGateThresholds
    from tasks.quality.suites import build_caption_suite

    started = time.perf_counter()
    captions, images, planted = synthetic_captions(args.n)
    keys = [f"k{index:08d}" for index in range(args.n)]
    print(f"generated {args.n:,} captions in {time.perf_counter() - started:.1f} s; planted {planted}")
    thresholds = CaptionGateThresholds()  # teacher-captions: every rule on, near duplicates included
    suite = build_caption_suite(thresholds)
    old_metrics, old_validate = baseline_modules()
    sample = min(args.baseline_sample or args.n, args.n)

    # Side by side: the new gate on all captions; both gates on the old one's sample (when smaller).
    new = time_gate(metrics, validate, keys, captions, images, thresholds, suite)
    table, decision = new[3], new[4]
    if sample < args.n:
        new_sample = time_gate(metrics, validate, keys[:sample], captions[:sample], images[:sample], thresholds, suite)
    old = time_gate(old_metrics, old_validate, keys[:sample], captions[:sample], images[:sample], thresholds, suite)
    reference_table, reference_decision = (new_sample[3], new_sample[4]) if sample < args.n else (table, decision)
    identical = old[3].equals(reference_table)
    same_verdicts = (old[4].filtered_reason.equals(reference_decision.filtered_reason)
                     and old[4].passed == reference_decision.passed)

    not_plain = re.compile(r"[^\t\n\r\x20-\x7e]")  # what the new metrics compute row-wise
    rowwise = sum(1 for caption in captions if not_plain.search(caption))
    print(f"{'gate (1 process, CPU seconds)':<44}{'captions':>11}{'metrics s':>11}{'GX s':>8}{'total s':>9}"
          f"{'captions/s':>12}{'wall s':>8}")

    def line(name: str, count: int, measured: tuple) -> float:
        metrics_s, gx_s, wall_s = measured[:3]
        rate = count / (metrics_s + gx_s)
        print(f"{name:<44}{count:>11,}{metrics_s:>11.2f}{gx_s:>8.2f}{metrics_s + gx_s:>9.2f}{rate:>12,.0f}{wall_s:>8.1f}")
        return rate

    new_rate = line("new: columnar metrics, GX on rule columns", args.n, new)
    if sample < args.n:
        new_sample_rate = line("new, on the old gate's sample", sample, new_sample)
    old_rate = line(f"old: row-wise at {BASELINE_COMMIT[:7]}", sample, old)
    print(f"speed-up of the gate per core: x{new_rate / old_rate:.1f} (new on {args.n:,} / old on {sample:,} captions)"
          + (f"; x{new_sample_rate / old_rate:.1f} on the same {sample:,}" if sample < args.n else ""))
    print(f"  metrics table x{(old[0] / sample) / (new[0] / args.n):.1f}, "
          f"GX validation + decision x{(old[1] / sample) / (new[1] / args.n):.1f}")
    if sample < args.n:
        print(f"  (the old gate was measured on the first {sample:,} captions only, not on all {args.n:,})")
    print(f"identical metrics table: {'yes' if identical else 'NO'}; same filtered rows and verdict: "
          f"{'yes' if same_verdicts else 'NO'}; captions the new gate computes row-wise (not plain ASCII): "
          f"{rowwise:,} ({rowwise / args.n:.2%})")

    with tempfile.TemporaryDirectory() as docs_root:
        docs_started = time.perf_counter()
        with_docs = validate.decide(table, suite, thresholds.max_filtered_fraction,
                                    data_docs_root=Path(docs_root), run_name="bench")
        docs_s = time.perf_counter() - docs_started
    assert with_docs.passed == decision.passed and with_docs.filtered_reason.equals(decision.filtered_reason)
    print(f"GX with stores + Data Docs (the gate's path): {docs_s:.2f} s wall")
    if args.workers > 1:
        parallel_started = time.perf_counter()
        parallel = metrics.compute_caption_metrics(keys, captions, thresholds.near_duplicate_jaccard,
                                                   workers=args.workers, image_ids=images)
        parallel_s = time.perf_counter() - parallel_started
        assert parallel.equals(table), "worker processes changed the metrics table"
        print(f"metrics with {args.workers} processes: {parallel_s:.2f} s wall, same table")

    filtered = decision.filtered_reason.value_counts().to_dict()
    print(f"filtered by reason: {filtered}; gate passed: {decision.passed}")
    ok = identical and same_verdicts
    for kind, rule in PLANTED_RULE.items():
        found = filtered.get(rule, 0)
        status = "ok" if found == planted[kind] else "MISMATCH"
        ok &= found == planted[kind]
        print(f"  planted {kind:<12}{planted[kind]:>8,}  filtered as {rule:<22}{found:>8,}  {status}")
    unexplained = sum(filtered.values()) - sum(planted.values())
    print(f"  clean captions filtered: {unexplained:,}  {'ok' if unexplained == 0 else 'MISMATCH'}")
    return 0 if ok and unexplained == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
