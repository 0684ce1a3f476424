"""PEL forward+backward throughput: one batched call on a mixed-aspect batch vs a per-image loop.

EVE's original code loops over the batch one image at a time (upstream baaivision/EVE, VisionTokenizer.forward); our PatchEmbeddingLayer
gathers every image's valid cells and runs the whole batch at once. Both variants run the *same* layer
(EVE-7B PEL dimensions: width 1024, 8 heads, patch 14, pool 2, projector 1024 -> 4096 -> 4096) on the same
images, side by side in one process; the printed ratio is loop time / batched time.

``--autocast`` adds the batched layer under ``torch.autocast(dtype=bfloat16)`` (CPU autocast here; the same
code path as GPU AMP), timed in the same interleaved rounds, with the largest deviation of its output from
fp32 relative to the output's scale (bf16 keeps 8 significant bits: ~0.4% per rounding).

    python benchmarks/bench_pel.py [--images 4] [--side 672] [--repeats 2] [--threads 1] [--autocast]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

ASPECTS = [(640, 480), (480, 640), (800, 200), (300, 300), (200, 900), (1024, 576), (500, 700), (900, 900)]


def images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)) for w, h in ASPECTS[:count]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--side", type=int, default=672, help="image_max_side (multiple of 28 * 24)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--autocast", action="store_true", help="also time the batched layer under bf16 autocast")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from eve_model.configuration_eve import EveConfig
    from eve_model.geometry import visual_token_count
    from eve_model.modeling_eve import PatchEmbeddingLayer
    from eve_model.processing_eve import EveImageProcessor

    config = EveConfig.eve_7b(image_max_side=args.side)
    torch.manual_seed(0)
    layer = PatchEmbeddingLayer(config)
    batch = EveImageProcessor.from_eve_config(config)(images(args.images))
    pixels, has_image = batch["pixel_values"], batch["has_image"]
    tokens = int(visual_token_count(batch["image_grid_hw"][:, 0], batch["image_grid_hw"][:, 1]).sum())

    def batched() -> None:
        layer.zero_grad(set_to_none=True)
        layer(pixels, has_image).embeddings.square().mean().backward()

    def per_image_loop() -> None:
        layer.zero_grad(set_to_none=True)
        for index in range(pixels.shape[0]):
            layer(pixels[index : index + 1], has_image[index : index + 1]).embeddings.square().mean().backward()

    def batched_bf16_autocast() -> None:
        layer.zero_grad(set_to_none=True)
        with torch.autocast(pixels.device.type, dtype=torch.bfloat16):
            output = layer(pixels, has_image).embeddings
        output.float().square().mean().backward()

    variants = (("batched", batched), ("per_image_loop", per_image_loop))
    if args.autocast:
        variants += (("batched_bf16", batched_bf16_autocast),)
    wall: dict[str, list[float]] = {name: [] for name, _ in variants}
    cpu: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _, run in variants:
        run()  # warm-up
    for _ in range(args.repeats):  # interleaved so machine-load drift hits both alike
        for name, run in variants:
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - wall_start)
            cpu[name].append(time.process_time() - cpu_start)

    # On a shared machine wall time includes waiting for a core; process CPU time does not.
    print(f"PEL at EVE-7B dims, {args.images} mixed-aspect images at max side {args.side}, {tokens} visual tokens, "
          f"{args.threads} thread(s), best of {args.repeats}, forward+backward")
    for name, _ in variants:
        best_wall, best_cpu = min(wall[name]), min(cpu[name])
        print(f"  {name:>15}: wall {1000 * best_wall / args.images:8.1f} ms/image, "
              f"CPU {1000 * best_cpu / args.images:8.1f} ms/image, {args.images / best_cpu:6.2f} images per CPU-second")
    print(f"  throughput ratio batched / per-image loop: wall {min(wall['per_image_loop']) / min(wall['batched']):.2f}x, "
          f"CPU time {min(cpu['per_image_loop']) / min(cpu['batched']):.2f}x")
    if args.autocast:
        with torch.no_grad():
            reference = layer(pixels, has_image).embeddings
            with torch.autocast(pixels.device.type, dtype=torch.bfloat16):
                low = layer(pixels, has_image).embeddings.float()
        deviation = float((low - reference).abs().max() / reference.abs().max())
        print(f"  throughput ratio bf16 autocast / fp32 (batched): wall {min(wall['batched']) / min(wall['batched_bf16']):.2f}x, "
              f"CPU time {min(cpu['batched']) / min(cpu['batched_bf16']):.2f}x; max |bf16 - fp32| / max |fp32| = {deviation:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
