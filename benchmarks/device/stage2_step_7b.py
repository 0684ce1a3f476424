"""Stage-2 training step at EVE-7B dimensions on one GPU: step time, tokens/s, MFU (not run by CI).

    python benchmarks/device/stage2_step_7b.py --layers 8 --micro-batch 8 --steps 6 --out $OUT/stage2_7b.json
    python benchmarks/device/stage2_step_7b.py --preset tiny --steps 3        # CPU smoke run of the script

What it runs: ``EveForCausalLM`` with the EVE-7B LLM dimensions (hidden 4096, 32 heads, FFN 11008,
vocab 32000; ``--layers`` of the 32 decoder layers so that it fits one GPU with full Adam state),
the EVE-7B PEL (width 1024, patch 14, pool 2, 672 px) and PAL, and a frozen CLIP ViT-L/14-336 teacher
with random weights (no hub access on the device; the FLOPs are what matter). Every parameter but the
teacher trains (stage 2), under the same DeepSpeed engine set-up as ``eve_model.training.engine``:
the ``infra/deepspeed`` template resolved by ``resolve_deepspeed_config``, bf16, AdamW, cosine LR.
Batches come from ``EveProcessor`` on synthetic images of mixed aspect ratio (up to 672 px, i.e. up
to 601 visual tokens) with short captions, so the token count per step is real, not assumed.

MFU = achieved model FLOP/s / device peak (bf16 dense). Model FLOPs per step =
6 x trainable-and-frozen LLM/PEL/PAL parameters x tokens + 12 x layers x hidden x seq x tokens
(attention, PaLM appendix B) + 2 x teacher parameters x teacher tokens (forward only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))


def _random_clip_teacher(directory: Path) -> str:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768)
    CLIPVisionModel(config).save_pretrained(directory)
    return str(directory)


def _eve_config(preset: str, layers: int, teacher_dir: Path):
    from eve_model.configuration_eve import EveConfig
    from eve_model.tokenizer import TINY_IMAGE_TOKEN_ID

    if preset == "tiny":
        return EveConfig.tiny()
    base = EveConfig.eve_7b()
    text_config = base.text_config
    text_config.num_hidden_layers = layers
    # The bundled tokenizer produces ids < 768, valid rows of the 32000-row embedding; its <image> id is
    # used as the image token (masked out before the embedding lookup; the PEL output fills those positions).
    return EveConfig.eve_7b(text_config=text_config, image_token_id=TINY_IMAGE_TOKEN_ID,
                            teacher_path=_random_clip_teacher(teacher_dir))


def _synthetic_samples(count: int, max_side: int, seed: int) -> list[dict]:
    import random

    from PIL import Image

    rng = random.Random(seed)
    samples = []
    for index in range(count):
        width = rng.choice([max_side, max_side // 2, (3 * max_side) // 4])
        height = rng.choice([max_side, max_side // 2, (2 * max_side) // 3])
        colour = tuple(rng.randrange(256) for _ in range(3))
        caption = " ".join(rng.choice(["a", "red", "blue", "circle", "square", "on", "the", "left", "image", "shows"]) for _ in range(40))
        samples.append({"key": f"s{index}", "image": Image.new("RGB", (width, height), colour), "caption": caption})
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["eve_7b", "tiny"], default="eve_7b")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers (multiple of 4, the PAL interval)")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--out", default=None, help="JSON result file (default $OUT/stage2_step_7b.json when $OUT is set)")
    args = parser.parse_args()

    from eve_model.training.runtime import configure_accelerator_env, discover_distributed_env, init_process_group, shutdown_process_group

    env = discover_distributed_env()
    device_type = configure_accelerator_env()
    init_process_group(device_type, env.local_rank)

    import deepspeed
    import torch

    from eve_model.modeling_eve import EveForCausalLM
    from eve_model.processing_eve import EveProcessor
    from eve_model.tokenizer import load_tiny_tokenizer
    from eve_model.training.config import eve_7b_stage_config, tiny_stage_config
    from eve_model.training.engine import cosine_with_warmup, resolve_deepspeed_config
    from eve_model.training.metrics_logging import device_peak_flops

    precision = "bf16" if device_type == "cuda" else "fp32"
    build_stage_config = eve_7b_stage_config if args.preset == "eve_7b" else tiny_stage_config
    stage_config = build_stage_config(
        2, "/unused", "/unused", init_checkpoint="/unused", precision=precision, zero_stage=args.zero_stage,
        global_batch_size_samples=args.micro_batch * args.accumulation, micro_batch_size_samples=args.micro_batch,
        max_steps=args.steps + 2, num_epochs=None,
    )
    with tempfile.TemporaryDirectory() as tmp:
        eve_config = _eve_config(args.preset, args.layers, Path(tmp) / "teacher")
        torch.manual_seed(0)
        started = time.perf_counter()
        model = EveForCausalLM(eve_config)
        model.enable_alignment()
        build_seconds = time.perf_counter() - started
    if args.gradient_checkpointing:
        model.language_model.gradient_checkpointing_enable()
    groups = model.parameter_groups()
    teacher_params = sum(p.numel() for p in model.teacher.parameters())
    model_params = sum(p.numel() for ps in groups.values() for p in ps)
    param_groups = [{"params": ps, "lr": stage_config.learning_rates[name], "name": name} for name, ps in groups.items() if ps]
    optimizer = torch.optim.AdamW(param_groups, weight_decay=0.0)
    ds_config = resolve_deepspeed_config(stage_config, 1, args.accumulation, eve_config.text_config.hidden_size)
    factor = cosine_with_warmup(stage_config.warmup_steps(args.steps + 2), args.steps + 2)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config,
                                           lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, factor))

    processor = EveProcessor.from_eve_config(eve_config, tokenizer=load_tiny_tokenizer(), max_length=2048)
    text = eve_config.text_config
    step_seconds, step_tokens, losses = [], [], []
    for step in range(args.steps + 2):
        micro_batches = [processor(_synthetic_samples(args.micro_batch, eve_config.image_max_side, seed=step * 100 + m), "plain")
                         for m in range(args.accumulation)]
        if device_type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        tokens = 0
        for batch in micro_batches:
            tokens += int(batch["attention_mask"].sum())  # the visual block is in the sequence already
            batch = {k: v.to(engine.device) for k, v in batch.items()}
            output = engine(**batch)
            engine.backward(output.loss)
            engine.step()
        if device_type == "cuda":
            torch.cuda.synchronize()
        if step >= 2:
            step_seconds.append(time.perf_counter() - started)
            step_tokens.append(tokens)
            losses.append(float(output.loss))
        print(f"step {step + 1}: {time.perf_counter() - started:.3f} s, {tokens} tokens, loss {float(output.loss):.4f}", flush=True)

    seconds = statistics.median(step_seconds)
    tokens_per_step = statistics.median(step_tokens)
    sequence_length = tokens_per_step / (args.micro_batch * args.accumulation)
    teacher_tokens = (eve_config.teacher_image_size // 14) ** 2 + 1 if args.preset == "eve_7b" else 49
    flops_per_step = (
        6 * model_params * tokens_per_step
        + 12 * text.num_hidden_layers * text.hidden_size * sequence_length * tokens_per_step
        + 2 * teacher_params * teacher_tokens * args.micro_batch * args.accumulation
    )
    peak = device_peak_flops(precision)
    result = {
        "device": torch.cuda.get_device_name() if device_type == "cuda" else "cpu",
        "preset": args.preset,
        "decoder_layers": text.num_hidden_layers,
        "model_parameters": model_params,
        "teacher_parameters": teacher_params,
        "micro_batch_samples": args.micro_batch,
        "accumulation": args.accumulation,
        "zero_stage": args.zero_stage,
        "precision": precision,
        "gradient_checkpointing": args.gradient_checkpointing,
        "build_seconds": build_seconds,
        "step_seconds_median": seconds,
        "step_seconds_all": step_seconds,
        "tokens_per_step_median": tokens_per_step,
        "tokens_per_second": tokens_per_step / seconds,
        "samples_per_second": args.micro_batch * args.accumulation / seconds,
        "model_tflops_per_second": flops_per_step / seconds / 1e12,
        "mfu": flops_per_step / seconds / peak if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device_type == "cuda" else None,
        "losses": losses,
    }
    print(json.dumps(result, indent=2))
    out = args.out or (str(Path(os.environ["OUT"]) / "stage2_step_7b.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
    shutdown_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
