"""Golden loss curves: a short deterministic tiny run of every stage, recorded in ``loss_curves.json``.

The chain is the embedded default's in miniature: base-llm (8 steps) -> stage 1 (4) -> stage 2 (4) ->
stage 3 (4), each a real job of the training entry point (``python -m eve_model.train``, one rank, DeepSpeed
ZeRO-0, fp32, one thread, seed 0) on a 16-sample dataset drawn by ``tests/eve_model/training_datasets.py``,
with the EfficientNet-Lite0 teacher. ``test_loss_curves.py`` reruns it and compares every step's loss, CE
and alignment loss with the recording (torchtitan's practice).

Regenerate after a change that is *meant* to change the numbers (and say why in the commit)::

    PYTHONPATH=. python -m tests.golden.loss_curves --write
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

GOLDEN_FILE = Path(__file__).with_name("loss_curves.json")
CHAIN = (("base-llm", 8), ("1", 4), ("2", 4), ("3", 4))
"""(stage, steps) in order; each stage starts from the previous one's final directory."""
RECORDED_KEYS = ("loss", "ce_loss", "alignment_loss")
COMMON = dict(
    global_batch_size_samples=4, micro_batch_size_samples=2, max_sequence_length_tokens=96, zero_stage=0,
    precision="fp32", seed=0, wandb_mode="disabled", checkpoint_interval_steps=100, log_interval_steps=1,
)
"""Two micro-batches per step (accumulation is part of what is pinned)."""

RELATIVE_TOLERANCE = 2e-3
"""Per value. Reruns on one machine reproduce the curve exactly; another CPU's float kernels (AVX2 vs
AVX-512 summation order) move the last digits and, through a few optimizer steps, the loss by up to
~1e-4 relative. A real change (a learning rate 10% off, a mask, a loss weight, a data order) moves the
curves by well over 1e-2 within these steps."""


def run_chain(work: Path) -> dict[str, list[dict[str, float | None]]]:
    """Run the chain under ``work``; returns {stage: [{step, loss, ce_loss, alignment_loss}, ...]}."""
    from eve_model.training.config import tiny_stage_config
    from tests.eve_model.training_datasets import read_jsonl, run_stage, write_tiny_dataset

    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    manifest = write_tiny_dataset(work / "ds", num_samples=16, items_per_shard=8)
    curves: dict[str, list[dict[str, float | None]]] = {}
    parent = None
    for stage, steps in CHAIN:
        output = work / f"stage-{stage}"
        config = tiny_stage_config(stage, str(output), str(work / "ds"), manifest.dataset_hash,
                                   init_checkpoint=parent, max_steps=steps, **COMMON)
        result = run_stage(config, work / f"stage-{stage}.json", home, nproc=1)
        if result.returncode != 0:
            raise RuntimeError(f"stage {stage} failed (rc {result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        curves[stage] = [{"step": row["step"], **{key: row[key] for key in RECORDED_KEYS}}
                         for row in read_jsonl(output / "metrics.jsonl")]
        parent = str(output / "final")
    return curves


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"write {GOLDEN_FILE.name} (default: print only)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="eve-golden-") as scratch:
        curves = run_chain(Path(scratch))
    payload = {
        "about": "tests/golden/loss_curves.py: tiny chain base-llm -> 1 -> 2 -> 3, 1 rank, ZeRO-0, fp32, seed 0",
        "recorded_on": {"python": platform.python_version(), "machine": platform.machine()},
        "settings": {"chain": [list(item) for item in CHAIN], **COMMON},
        "curves": curves,
    }
    text = json.dumps(payload, indent=1, sort_keys=True) + "\n"
    if args.write:
        GOLDEN_FILE.write_text(text)
        print(f"wrote {GOLDEN_FILE}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
