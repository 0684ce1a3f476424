"""W&B mirrors metrics.jsonl and is never a reason to lose a step: when its service process dies mid-run
(killed, as a scheduler's SIGTERM to the whole job does), logging goes on in metrics.jsonl."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from eve_model.training.metrics_logging import MetricsLogger


def _children_named(pid: int, name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid and name in command:
            found.append(int(entry.name))
    return found


def test_a_killed_wandb_service_stops_the_mirror_not_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = MetricsLogger(
        tmp_path, rank=0, run_name="wandb-dies", total_steps=6, start_step=0, wandb_mode="offline",
        wandb_project="tests", wandb_dir=tmp_path / "wandb", run_config={},
    )
    assert logger.wandb_run_id is not None
    logger.log({"step": 1, "loss": 1.0})
    deadline = time.monotonic() + 30  # the writer thread starts the run in the background
    while not (services := _children_named(os.getpid(), "wandb")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert services, "the offline W&B run should have started its service process"
    for pid in services:
        os.kill(pid, signal.SIGTERM)
    time.sleep(1.0)
    for step in range(2, 7):
        logger.log({"step": step, "loss": 1.0 / step})
    logger.close({"loss": 1 / 6})
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert "W&B disabled for the rest of this job" in capsys.readouterr().err
