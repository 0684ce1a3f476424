"""Near-duplicate image removal calibrated on a real image set: precision and recall per method.

    apt-get install tuxpaint-stamps-default      # ~950 stamps (photos and drawings), GPL-2+
    .venv/bin/python benchmarks/bench_curation.py                 # teacher embedding included (~5 min on 2 cores)
    .venv/bin/python benchmarks/bench_curation.py --no-teacher    # hashes only (seconds)

The set: every PNG stamp of Debian's ``tuxpaint-stamps-default`` (785 images: letters, signs,
animals, food, ...; pixel-identical files count as true duplicates), plus planted near copies of
200 of them (seeded): JPEG q75, resized to 80 %, 6 % brighter, a 2 % border crop, 50 each. Every
pair of images is labelled: duplicate when both come from the same original, different otherwise.
Every image is flattened onto white first (the stamps are transparent PNGs), so all methods see
the same pixels. For each method and threshold the script prints pair precision (flagged pairs that
are true duplicates), recall (true pairs flagged), the number of different-image pairs flagged, and
recall per kind of copy; then the distances of the pairs that must survive (q/p, d/b, red/green
traffic light, T-junction/crossroads) and how each greedy curation rule fares on the whole set.
Finally the cluster plans that curation derives for a few dataset sizes.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np

STAMPS = Path("/usr/share/tuxpaint/stamps")
MUST_SURVIVE = [
    ("symbols/alphabets/english/filled/lowercase/q_filled.png", "symbols/alphabets/english/filled/lowercase/p_filled.png"),
    ("symbols/alphabets/english/filled/lowercase/d_filled.png", "symbols/alphabets/english/filled/lowercase/b_filled.png"),
    ("symbols/alphabets/english/outlined/lowercase/q_outline.png", "symbols/alphabets/english/outlined/lowercase/p_outline.png"),
    ("symbols/alphabets/english/outlined/lowercase/d_outline.png", "symbols/alphabets/english/outlined/lowercase/b_outline.png"),
    ("town/roadsigns/stoplight_01_red.png", "town/roadsigns/stoplight_03_green.png"),
    ("town/roadsigns/t-junction.png", "town/roadsigns/crossroads.png"),
]


def load_set(num_copies: int, seed: int):
    """(flattened images, names, group id per image, kind per image)."""
    from PIL import Image, ImageEnhance

    from tasks.data.image_near_duplicates import flatten_on_white

    paths = sorted(STAMPS.rglob("*.png"))
    if not paths:
        raise SystemExit(f"no stamps under {STAMPS}: apt-get install tuxpaint-stamps-default")
    images, names, groups, kinds, first_of = [], [], [], [], {}
    for path in paths:
        image = flatten_on_white(Image.open(path))
        digest = image.tobytes() + repr(image.size).encode()
        groups.append(first_of.setdefault(digest, len(first_of)))
        images.append(image)
        names.append(str(path.relative_to(STAMPS)))
        kinds.append("original")

    def jpeg(image):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=75)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    def resize(image):
        return image.resize((max(8, int(image.width * 0.8)), max(8, int(image.height * 0.8))))

    def brighter(image):
        return ImageEnhance.Brightness(image).enhance(1.06)

    def crop(image):
        dx, dy = max(1, image.width // 50), max(1, image.height // 50)
        return image.crop((dx, dy, image.width - dx, image.height - dy))

    transforms = [jpeg, resize, brighter, crop]
    rng = np.random.default_rng(seed)
    originals = len(images)
    for number, index in enumerate(rng.choice(originals, size=num_copies, replace=False)):
        transform = transforms[number % len(transforms)]
        images.append(transform(images[index]))
        names.append(f"{transform.__name__}-copy-of:{names[index]}")
        groups.append(groups[index])
        kinds.append(transform.__name__)
    return images, names, np.asarray(groups), np.asarray(kinds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=200, help="planted near copies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-teacher", action="store_true", help="skip the teacher embedding (slow on CPU)")
    args = parser.parse_args()

    from tasks.data.curate import CurationConfig, plan_clusters
    from tasks.data.image_near_duplicates import ImageFingerprints, ImageNearDuplicateRule, find_near_duplicate_images

    started = time.perf_counter()
    images, names, groups, kinds = load_set(args.copies, args.seed)
    count = len(images)
    print(f"{count} images ({int((kinds == 'original').sum())} stamps, {len(set(groups))} distinct, "
          f"{count - int((kinds == 'original').sum())} planted copies) in {time.perf_counter() - started:.1f} s")

    t0 = time.perf_counter()
    fingerprints = ImageFingerprints()
    for image in images:
        fingerprints.add(image)
    phash64, phash256, colour = fingerprints.arrays()
    hash_seconds = time.perf_counter() - t0

    upper = np.triu_indices(count, 1)
    truth = (groups[:, None] == groups[None, :])[upper]
    copy_kind = np.where(kinds[upper[1]] != "original", kinds[upper[1]], kinds[upper[0]])

    def bits(packed: np.ndarray) -> np.ndarray:
        unpacked = np.unpackbits(packed, axis=1).astype(np.int16)
        return (unpacked.shape[1] - (unpacked @ unpacked.T + (1 - unpacked) @ (1 - unpacked).T))[upper]

    distance64, distance256 = bits(phash64), bits(phash256)
    colour_cosine = (colour @ colour.T)[upper]
    methods: dict[str, np.ndarray] = {}
    teacher_seconds = None
    if not args.no_teacher:
        from tasks.data.curate import teacher_embed_fn

        embed, teacher_name = teacher_embed_fn(num_threads=None)
        t0 = time.perf_counter()
        vectors = np.concatenate([embed(images[i : i + 32]) for i in range(0, count, 32)])
        teacher_seconds = time.perf_counter() - t0
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        teacher_cosine = (vectors @ vectors.T)[upper]
        for threshold in (0.95, 0.97, 0.98, 0.99, 0.995):
            methods[f"{teacher_name} cosine >= {threshold}"] = teacher_cosine >= threshold
    for threshold in (2, 4, 6, 8):
        methods[f"pHash-64 <= {threshold} bits"] = distance64 <= threshold
    for threshold in (16, 24, 32):
        methods[f"pHash-256 <= {threshold} bits"] = distance256 <= threshold
    methods["colour thumbnail cosine >= 0.95"] = colour_cosine >= 0.95
    rule = ImageNearDuplicateRule()
    methods[f"CHOSEN: {rule.describe()}"] = np.vectorize(rule.matches)(distance64, distance256, colour_cosine)

    print(f"\nper pair ({truth.size:,} pairs, {int(truth.sum())} true duplicate pairs); hashes {hash_seconds:.1f} s"
          + (f", teacher embedding {teacher_seconds:.1f} s" if teacher_seconds else ""))
    print(f"{'method':<120} {'precision':>9} {'recall':>7} {'wrong':>6}  recall by copy kind")
    for label, flagged in methods.items():
        true_positive = int((flagged & truth).sum())
        precision = true_positive / max(1, int(flagged.sum()))
        recall = true_positive / int(truth.sum())
        by_kind = " ".join(
            f"{kind} {(flagged & truth & (copy_kind == kind)).sum() / max(1, (truth & (copy_kind == kind)).sum()):.2f}"
            for kind in ("jpeg", "resize", "brighter", "crop")
        )
        print(f"{label:<120} {precision:>9.3f} {recall:>7.3f} {int((flagged & ~truth).sum()):>6}  {by_kind}")

    position = {name: index for index, name in enumerate(names)}
    print("\npairs that must survive: distances (chosen rule verdict)")
    for first, second in MUST_SURVIVE:
        i, j = sorted((position[first], position[second]))
        k = int(np.flatnonzero((upper[0] == i) & (upper[1] == j))[0])
        verdict = "DROPPED" if rule.matches(int(distance64[k]), int(distance256[k]), float(colour_cosine[k])) else "kept"
        teacher = f" teacher cosine {teacher_cosine[k]:.4f}" if teacher_seconds else ""
        print(f"  {Path(first).name:>22} vs {Path(second).name:<22} pHash-64 {distance64[k]:>2} pHash-256 "
              f"{distance256[k]:>3} colour {colour_cosine[k]:.3f}{teacher} -> {verdict}")

    dropped = find_near_duplicate_images(fingerprints, rule)
    wrong = [(names[row], names[original]) for row, (original, _) in dropped.items() if groups[row] != groups[original]]
    duplicates_total = count - len(set(groups))
    print(f"\ngreedy curation with the chosen rule: {len(dropped)} dropped, {len(dropped) - len(wrong)} of them "
          f"true duplicates ({duplicates_total} images are duplicates of an earlier one); different images "
          f"dropped: {len(wrong)} {wrong[:5]}")

    print("\ncluster plans derived by curation (paper shape, default config with a target):")
    for candidates, target in ((600, 500), (10_000, 10_000), (100_000, 10_000), (5_000_000, 1_000_000),
                               (400_000_000, 15_000_000)):
        plan = plan_clusters(candidates, CurationConfig(target_num_items=target))
        print(f"  {candidates:>11,} images, target {target:>10,}: {plan.num_clusters:>7,} clusters x "
              f"{plan.keep_per_cluster:>3}  ({plan.rule.split(';')[0]})")


if __name__ == "__main__":
    main()
