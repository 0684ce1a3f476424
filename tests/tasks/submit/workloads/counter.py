"""Resumable rank workload shaped like the training entry point's contract.

Runs TOTAL_STEPS steps of a deterministic accumulator, each STEP_SECONDS long. SIGTERM or SIGUSR1
asks it to stop: it writes its checkpoint at the next step boundary and exits 75. On start it
resumes from its checkpoint. At the end each rank writes result-<rank>.json with the final value,
so an interrupted-and-resumed run can be compared with an uninterrupted one.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

out_dir, total_steps, step_seconds = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
rank = int(os.environ.get("RANK", "0"))
checkpoint = out_dir / f"checkpoint-rank{rank}.json"
stop_requested: list[int] = []
signal.signal(signal.SIGTERM, lambda signum, frame: stop_requested.append(signum))
signal.signal(signal.SIGUSR1, lambda signum, frame: stop_requested.append(signum))

out_dir.mkdir(parents=True, exist_ok=True)
state = {"step": 0, "value": 7, "attempts": 0}
if checkpoint.exists():
    state = json.loads(checkpoint.read_text())
    print(f"rank {rank} resumed at step {state['step']}", flush=True)
state["attempts"] += 1
print(f"rank {rank} running from step {state['step']}", flush=True)
while state["step"] < total_steps:
    if stop_requested:
        checkpoint.write_text(json.dumps(state))
        print(f"rank {rank} got signal {stop_requested[0]}: checkpoint at step {state['step']}, exit 75", flush=True)
        sys.exit(75)
    time.sleep(step_seconds)
    state["value"] = (state["value"] * 31 + state["step"]) % 1_000_003
    state["step"] += 1
(out_dir / f"result-rank{rank}.json").write_text(json.dumps(state))
print(f"rank {rank} done: value {state['value']} after {state['attempts']} attempt(s)", flush=True)
