"""Rank workload: a gloo all-reduce of (rank + 1); each rank writes what it saw to OUT_DIR/rank-<r>.json."""

import hashlib
import json
import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from eve_model.preflight import check_world_size

out_dir = Path(sys.argv[1])
dist.init_process_group("gloo")
rank, world_size = dist.get_rank(), dist.get_world_size()
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
record = {
    "rank": rank,
    "world_size": world_size,
    "local_rank": int(os.environ["LOCAL_RANK"]),
    "group_rank": int(os.environ["GROUP_RANK"]),
    "master_addr": os.environ["MASTER_ADDR"],
    "master_port": os.environ["MASTER_PORT"],
    "all_reduce_sum": value.item(),
    "slurm_node": os.environ.get("SLURMD_NODENAME"),
    "hostname": socket.gethostname(),
    "job_name": os.environ.get("EVE_JOB_NAME"),
    # Raises unless WORLD_SIZE == the nodes x ranks per node the backend exported.
    "preflight_world_size": check_world_size(),
    # Proves a secret arrived without writing its value anywhere.
    "secret_sha256": hashlib.sha256(os.environ.get("EVE_TEST_SECRET", "").encode()).hexdigest(),
}
out_dir.mkdir(parents=True, exist_ok=True)
(out_dir / f"rank-{rank}.json").write_text(json.dumps(record))
print(f"rank {rank}/{world_size} all-reduce sum {value.item()}", flush=True)
dist.barrier()
dist.destroy_process_group()
