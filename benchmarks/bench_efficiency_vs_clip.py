"""Vision front-end cost: EVE's PEL at 672 px vs a CLIP ViT-L/14-336 vision tower (randomly initialised).

Both run forward (inference, no grad) on the same images, side by side in one process. FLOPs are counted
with ``torch.utils.flop_counter.FlopCounterMode`` (matmul/conv FLOPs, 2 per multiply-add); time is the best
of ``--repeats`` runs, reported per image as wall and process-CPU time (the CPU time excludes waiting for a
core on a shared machine). The PEL includes its projector to the 4096-wide LLM (the tokens it hands over);
CLIP is the vision tower alone (LLaVA would add its own projector on top). Weights do not change the cost,
so random initialisation is used (no CLIP weights ship offline).

    python benchmarks/bench_efficiency_vs_clip.py [--images 2] [--repeats 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

ASPECTS = [(640, 480), (900, 900), (480, 640), (1024, 576)]


def measure(run, repeats: int) -> tuple[float, float]:
    wall, cpu = [], []
    for _ in range(repeats):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        run()
        wall.append(time.perf_counter() - wall_start)
        cpu.append(time.process_time() - cpu_start)
    return min(wall), min(cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import CLIPVisionConfig, CLIPVisionModel

    from eve_model.configuration_eve import EveConfig
    from eve_model.geometry import visual_token_count
    from eve_model.modeling_eve import PatchEmbeddingLayer
    from eve_model.processing_eve import EveImageProcessor

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)) for w, h in ASPECTS[: args.images]]
    config = EveConfig.eve_7b()
    torch.manual_seed(0)
    pel = PatchEmbeddingLayer(config).eval()
    batch = EveImageProcessor.from_eve_config(config)(images)
    clip_config = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                   image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    clip = CLIPVisionModel(clip_config).eval()
    # CLIP sees the LLaVA-pad 336 px view (the teacher view; normalisation is irrelevant to cost).
    clip_pixels = batch["teacher_pixel_values"][:, :3].contiguous()
    assert clip_pixels.shape[-1] == 336

    run_pel = lambda: pel(batch["pixel_values"], batch["has_image"])  # noqa: E731
    run_clip = lambda: clip(pixel_values=clip_pixels)  # noqa: E731
    flops = {}
    for name, run in (("eve_pel_672", run_pel), ("clip_vit_l14_336", run_clip)):
        # Counted with autograd on (FlopCounterMode's module tracker needs grad_fns); forward FLOPs only.
        counter = FlopCounterMode(display=False)
        with counter:
            run()
        flops[name] = counter.get_total_flops() / len(images)
    with torch.no_grad():
        timing = {}
        for name, run in (("eve_pel_672", run_pel), ("clip_vit_l14_336", run_clip)):
            timing[name] = measure(run, args.repeats)
    tokens = int(visual_token_count(batch["image_grid_hw"][:, 0], batch["image_grid_hw"][:, 1]).sum()) / len(images)
    parameters = {"eve_pel_672": sum(p.numel() for p in pel.parameters()), "clip_vit_l14_336": sum(p.numel() for p in clip.parameters())}
    print(f"Vision front-end, forward, {len(images)} images ({', '.join(f'{w}x{h}' for w, h in ASPECTS[:len(images)])}), "
          f"{args.threads} thread(s), per image")
    print(f"  EVE PEL visual tokens per image (to the LLM): {tokens:.0f};  CLIP patch tokens: 576 (+1 CLS)")
    for name in flops:
        wall, cpu = timing[name]
        print(f"  {name:>17}: {parameters[name] / 1e6:7.1f} M params  {flops[name] / 1e9:8.1f} GFLOPs/image  "
              f"wall {1000 * wall / len(images):8.1f} ms/image  CPU {1000 * cpu / len(images):8.1f} ms/image")
    print(f"  ratio CLIP / EVE PEL: FLOPs {flops['clip_vit_l14_336'] / flops['eve_pel_672']:.2f}x, "
          f"wall time {timing['clip_vit_l14_336'][0] / timing['eve_pel_672'][0]:.2f}x, "
          f"CPU time {timing['clip_vit_l14_336'][1] / timing['eve_pel_672'][1]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
