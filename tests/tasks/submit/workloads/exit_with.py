"""Rank workload that prints a few lines, then exits with the code given (rank 0 only; others exit 0)."""

import os
import sys

code = int(sys.argv[1])
rank = int(os.environ.get("RANK", "0"))
for line in range(5):
    print(f"rank {rank} line {line}", flush=True)
if rank == 0:
    print(f"rank 0 fails on purpose with exit code {code}", file=sys.stderr, flush=True)
    sys.exit(code)
