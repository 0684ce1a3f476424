"""ZeRO-3 loading without host copies: with ``accelerate`` installed and transformers' DeepSpeed
integration alive (``HfDeepSpeedConfig``, as the trainer sets it up), ``from_pretrained`` builds the
model inside ``deepspeed.zero.Init``: each of 2 ranks stores only its partition of every parameter
(about half), never the whole model, and the gathered weights are exactly the checkpoint's.
At 7B that is the difference between 8 full host copies per node and one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from eve_model.training.config import tiny_stage_config
from tests.eve_model.training_datasets import REPO_ROOT, subprocess_env, write_tiny_dataset
from tests.fixtures.tiny_eve import write_tiny_eve_checkpoint

pytestmark = pytest.mark.slow

WORKLOAD = Path(__file__).parent / "workloads" / "zero3_loading.py"


def test_zero3_stage_model_loads_into_partitions_on_two_ranks(tmp_path):
    import subprocess
    import sys

    pytest.importorskip("accelerate")
    checkpoint = write_tiny_eve_checkpoint(tmp_path / "tiny-eve")
    manifest = write_tiny_dataset(tmp_path / "ds", num_samples=8, items_per_shard=8)
    config = tiny_stage_config(2, str(tmp_path / "out"), str(tmp_path / "ds"), manifest.dataset_hash,
                               init_checkpoint=str(checkpoint), zero_stage=3, global_batch_size_samples=4, micro_batch_size_samples=1)
    config_path = config.write(tmp_path / "stage2.json")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(WORKLOAD), str(config_path), str(tmp_path / "report")],
        env=subprocess_env(tmp_path / "home"), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    reports = [json.loads((tmp_path / "report" / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    for report in reports:
        for name in ("pel", "llm"):
            group = report["groups"][name]
            assert group["all_partitioned"], (report["rank"], name)
            # Each rank stores its half (ZeRO pads partitions to equal size), never the whole.
            assert group["stored_elements"] <= group["full_elements"] // 2 + 64 * 1024, (report["rank"], name, group)
    assert sum(r["groups"]["llm"]["stored_elements"] for r in reports) >= reports[0]["groups"]["llm"]["full_elements"]
    on_disk = load_file(checkpoint / "model.safetensors")
    expected = {
        key[len("language_model."):]: hashlib.sha256(tensor.to(torch.float32).contiguous().numpy().tobytes()).hexdigest()
        for key, tensor in on_disk.items() if key.startswith("language_model.")
    }
    assert reports[0]["llm_sha256"] == reports[1]["llm_sha256"]
    assert {k: v for k, v in reports[0]["llm_sha256"].items() if k in expected} == expected
