"""One training micro-step of the tiny EVE model with the frozen teacher run every step vs read from
the teacher feature cache (``eve_model.teacher_cache``), side by side in one process.

Both variants use the same model weights, the same demo images (EfficientNet-Lite0 at 224 px, the
embedded default's teacher) and one intra-op thread (a rank of the 2-rank demo job). Steps alternate
between the variants so machine load hits both alike; the script also checks that both compute the
same loss. The demo stages measured 0.87 s/step (teacher) vs 0.24 s/step (cache) at 2 ranks x 8.

    python benchmarks/bench_teacher_cache.py [--steps 10] [--batch 8]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from io import BytesIO

import torch
from PIL import Image


def demo_batch(batch_size: int):
    from eve_model.configuration_eve import EveConfig
    from eve_model.processing_eve import EveProcessor
    from tasks.data.demo_source import DemoDataConfig, render_scene, sample_scene

    rng = random.Random(0)
    scenes = [sample_scene(rng, DemoDataConfig()) for _ in range(batch_size)]
    samples = [{"image": Image.open(BytesIO(render_scene(scene))).convert("RGB"), "caption": scene.describe()}
               for scene in scenes]
    return EveProcessor.from_eve_config(EveConfig.tiny(), max_length=256)(samples, "plain")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from eve_model.configuration_eve import EveConfig
    from eve_model.modeling_eve import EveForCausalLM
    from eve_model.teacher_cache import CachedTeacher

    torch.manual_seed(0)
    model = EveForCausalLM(EveConfig.tiny())
    model.enable_alignment()
    model.train()
    teacher = model.teacher
    batch = demo_batch(args.batch)
    with tempfile.TemporaryDirectory() as cache_dir:
        cached = CachedTeacher(teacher, cache_dir)
        cached(batch["teacher_pixel_values"])  # warm: every later step is a hit, as in epochs >= 2 of a demo stage
        variants = {"teacher every step": teacher, "teacher feature cache": cached}
        times: dict[str, list[float]] = {name: [] for name in variants}
        losses: dict[str, float] = {}
        for _ in range(args.steps + 1):  # the first round warms up allocators and is dropped
            for name, variant in variants.items():
                model.teacher = variant
                started = time.perf_counter()
                output = model(**batch)
                output.loss.backward()
                times[name].append(time.perf_counter() - started)
                losses[name] = float(output.loss.detach())
                model.zero_grad(set_to_none=True)
        print(f"tiny EVE micro-step (forward + backward + PAL loss), batch {args.batch}, 1 thread, "
              f"{args.steps} steps each, EfficientNet-Lite0 teacher at 224 px")
        medians = {name: statistics.median(values[1:]) for name, values in times.items()}
        for name, median in medians.items():
            print(f"  {name:>22}: median {median * 1000:8.1f} ms/step   loss {losses[name]:.6f}")
        same = abs(losses["teacher every step"] - losses["teacher feature cache"]) < 1e-5
        print(f"  identical loss: {same};  step-time ratio teacher / cache: "
              f"{medians['teacher every step'] / medians['teacher feature cache']:.2f}x  "
              f"(cache hits {cached.hits}, misses {cached.misses})")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
