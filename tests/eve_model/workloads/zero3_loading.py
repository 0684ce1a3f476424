"""Rank workload: build a stage model the way the trainer does under ZeRO-3 (transformers' DeepSpeed
integration alive, ``accelerate`` installed) and report what this rank holds.

Usage (under torchrun): zero3_loading.py STAGE_CONFIG.json OUT_DIR
Writes OUT_DIR/rank-<r>.json: per parameter group, the full element count (``ds_numel``), the
elements this rank stores (its partition) and whether every parameter is a ZeRO-3 partition; and
the gathered weights' sha256 per tensor, to compare with the checkpoint on disk.
"""

import hashlib
import json
import sys
from pathlib import Path

from eve_model.training.runtime import configure_accelerator_env, discover_distributed_env, init_process_group

config_path, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
env = discover_distributed_env()
init_process_group(configure_accelerator_env(), env.local_rank)

import deepspeed  # noqa: E402
import torch  # noqa: E402
from transformers.integrations import HfDeepSpeedConfig  # noqa: E402

from eve_model.training.config import StageConfig  # noqa: E402
from eve_model.training.engine import resolve_deepspeed_config  # noqa: E402
from eve_model.training.stage_model import build_stage_model, eve_config_for_preset  # noqa: E402

config = StageConfig.read(config_path)
hidden = eve_config_for_preset(config.model_preset, config.model_overrides).text_config.hidden_size
ds_config = resolve_deepspeed_config(config, env.world_size, config.gradient_accumulation_steps(env.world_size), hidden)
keep_alive = HfDeepSpeedConfig(ds_config)  # as StageTrainer._build: from_pretrained loads into partitions
stage_model = build_stage_model(config)
groups = stage_model.parameter_groups()
report = {"rank": env.rank, "groups": {}}
for name, params in groups.items():
    report["groups"][name] = {
        "full_elements": sum(int(getattr(p, "ds_numel", p.numel())) for p in params),
        "stored_elements": sum(int(p.ds_tensor.numel()) if hasattr(p, "ds_tensor") else p.numel() for p in params),
        "all_partitioned": all(hasattr(p, "ds_id") and p.numel() == 0 for p in params),
    }
digests = {}
for name, param in stage_model.model.language_model.named_parameters():
    with deepspeed.zero.GatheredParameters([param]):
        digests[name] = hashlib.sha256(param.detach().to(torch.float32).contiguous().numpy().tobytes()).hexdigest()
report["llm_sha256"] = digests
out_dir.mkdir(parents=True, exist_ok=True)
(out_dir / f"rank-{env.rank}.json").write_text(json.dumps(report, indent=1, sort_keys=True))
torch.distributed.barrier()
torch.distributed.destroy_process_group()
