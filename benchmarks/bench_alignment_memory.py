"""Peak memory of the PAL's student features: hooks on the selected depths vs ``output_hidden_states``.

EVE's original code runs the LLM with ``output_hidden_states=True`` and stacks all L+1 hidden states into
(B, T, L+1, D) before selecting every 4th depth (upstream baaivision/EVE, eve_llama.py). ``EveForCausalLM`` instead captures only
the selected depths with forward hooks. Each variant runs in a fresh subprocess (same model, same batch) and
reports its peak resident memory above the level reached after building the model and batch; both compute
the identical PAL loss, which the script checks.

    python benchmarks/bench_alignment_memory.py [--layers 16] [--hidden 256] [--seq-text 100] [--batch 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch


def build(args):
    import numpy as np
    from PIL import Image
    from torch import nn

    from eve_model.configuration_eve import EveConfig
    from eve_model.modeling_eve import EveForCausalLM
    from eve_model.processing_eve import EveProcessor
    from eve_model.teachers import VisionTeacher

    class RandomTeacher(VisionTeacher):
        def __init__(self, config):
            super().__init__()
            cell = config.teacher_cell_px
            self.projection = nn.Conv2d(3, config.teacher_feature_dim, kernel_size=cell, stride=cell)
            self.image_size, self.grid_size = config.teacher_image_size, config.teacher_grid_size
            self.feature_dim, self.weights_sha256 = config.teacher_feature_dim, "random"
            self.freeze()

        def features(self, rgb):
            return self.projection(rgb)

    text = {"vocab_size": 768, "hidden_size": args.hidden, "intermediate_size": args.hidden * 8 // 3,
            "num_hidden_layers": args.layers, "num_attention_heads": 8, "num_key_value_heads": 8,
            "max_position_embeddings": 4096}
    config = EveConfig.tiny(text_config=text, image_max_side=448, patch_size=14, teacher_image_size=224,
                            teacher_grid_size=16, teacher_feature_dim=256, alignment_depth_interval=4,
                            alignment_width=256)
    torch.manual_seed(0)
    model = EveForCausalLM(config)
    model.enable_alignment(RandomTeacher(config))
    processor = EveProcessor.from_eve_config(config, max_length=4096)
    rng = np.random.default_rng(0)
    caption = " ".join(["a red circle on the left of a blue square"] * (args.seq_text // 10))
    samples = [{"image": Image.fromarray(rng.integers(0, 256, (448, 448, 3), dtype=np.uint8)), "caption": caption}
               for _ in range(args.batch)]
    return model, processor(samples, "plain")


def run_variant(variant: str, mode: str, args) -> dict:
    torch.set_num_threads(1)
    model, batch = build(args)
    model.train()
    if variant == "all_hidden_states":
        decoder = model.language_model.model
        decoder_forward = decoder.forward
        state: dict = {}

        def forward_keeping_everything(*forward_args, **forward_kwargs):
            # The original: every hidden state is returned and stacked, then the PAL depths are picked.
            outputs = decoder_forward(*forward_args, **{**forward_kwargs, "output_hidden_states": True})
            stacked = torch.stack(outputs.hidden_states[:-1] + (outputs.last_hidden_state,), dim=2)  # (B, T, L+1, D)
            for depth in model.config.alignment_depths:
                if depth:
                    state["captured"][depth] = stacked[:, :, depth]
            return outputs

        def no_hooks(captured):
            state["captured"] = captured
            return []

        decoder.forward = forward_keeping_everything
        model._capture_depths = no_hooks
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "train":
        output = model(**batch)
        output.loss.backward()
    else:  # evaluation loss: no autograd graph keeps the hidden states alive
        with torch.no_grad():
            output = model(**batch)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tokens = int(output.attention_mask.sum())
    return {"variant": variant, "extra_peak_mib": (peak_kib - baseline_kib) / 1024, "tokens": tokens,
            "alignment_loss": float(output.alignment_loss.detach()), "loss": float(output.loss.detach())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--seq-text", type=int, default=100, help="approximate caption words per sample")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="train", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.mode, args)))
        return 0
    all_same = True
    depths = list(range(args.layers, -1, -4))
    for mode, title in (("train", "forward+backward"), ("eval", "no-grad evaluation forward")):
        results = {}
        for variant in ("hooks_selected_depths", "all_hidden_states"):
            command = [sys.executable, __file__, "--variant", variant, "--mode", mode, "--layers", str(args.layers),
                       "--hidden", str(args.hidden), "--seq-text", str(args.seq_text), "--batch", str(args.batch)]
            completed = subprocess.run(command, check=True, capture_output=True, text=True)
            results[variant] = json.loads(completed.stdout.strip().splitlines()[-1])
        hooks, everything = results["hooks_selected_depths"], results["all_hidden_states"]
        print(f"PAL feature capture, Llama {args.layers} layers x hidden {args.hidden}, batch {args.batch}, "
              f"{hooks['tokens']} tokens, depths {depths}, {title} (fp32, CPU)")
        for name, result in results.items():
            print(f"  {name:>22}: peak +{result['extra_peak_mib']:8.1f} MiB   loss {result['loss']:.6f}")
        same = abs(hooks["loss"] - everything["loss"]) < 1e-4
        all_same &= same
        print(f"  identical loss: {same};  peak-memory ratio all_hidden_states / hooks: "
              f"{everything['extra_peak_mib'] / max(hooks['extra_peak_mib'], 1e-9):.2f}x")
    return 0 if all_same else 1


if __name__ == "__main__":
    raise SystemExit(main())
