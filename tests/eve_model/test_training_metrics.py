"""W&B is an observer: a W&B run whose background service died (SLURM signals every process of a
job on cancel/requeue) may raise or block on every call; the training loop must never wait for it
or see its errors, and a flush on a signal exits after a bounded wait."""

from __future__ import annotations

import json
import threading
import time

import eve_model.training.metrics_logging as metrics_logging
from eve_model.training.metrics_logging import MetricsLogger


class _Run:
    def __init__(self, behaviour: str) -> None:
        self.behaviour, self.logged, self.summary = behaviour, [], {}
        self.blocked = threading.Event()

    def log(self, values, step):
        if self.behaviour == "raises":
            raise ConnectionResetError("Connection lost")
        if self.behaviour == "blocks":
            self.blocked.set()
            threading.Event().wait()  # a futex wait on a dead service: forever
        self.logged.append(step)

    def finish(self):
        if self.behaviour == "blocks":
            threading.Event().wait()


def _logger(tmp_path, monkeypatch, run: _Run) -> MetricsLogger:
    monkeypatch.setattr(metrics_logging, "_start_wandb", lambda *args: run)
    return MetricsLogger(tmp_path, rank=0, run_name="t", total_steps=5, start_step=0, wandb_mode="offline",
                         wandb_project="p", wandb_dir=tmp_path / "wandb", run_config={})


def _metrics(step: int) -> dict:
    return {"step": step, "loss": 1.0 / step, "learning_rate": {"llm": 0.1}}


def test_a_blocking_wandb_never_blocks_the_loop_and_a_signal_exit_is_bounded(tmp_path, monkeypatch):
    run = _Run("blocks")
    logger = _logger(tmp_path, monkeypatch, run)
    started = time.monotonic()
    for step in range(1, 6):
        logger.log(_metrics(step))
    assert run.blocked.wait(5)
    logger.close(abandon_after_seconds=0.5)
    assert time.monotonic() - started < 3
    # metrics.jsonl, which the platform reads, is complete regardless.
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4, 5]


def test_a_failing_wandb_is_disabled_without_raising(tmp_path, monkeypatch, capsys):
    logger = _logger(tmp_path, monkeypatch, _Run("raises"))
    for step in range(1, 4):
        logger.log(_metrics(step))
    logger.close()
    assert "W&B disabled for the rest of this job: ConnectionResetError" in capsys.readouterr().err
    assert logger.wandb_run_id is None or len(logger.wandb_run_id) == 8


def test_a_healthy_wandb_gets_every_step_and_the_same_run_id_on_resume(tmp_path, monkeypatch):
    run = _Run("ok")
    logger = _logger(tmp_path, monkeypatch, run)
    run_id = logger.wandb_run_id
    for step in range(1, 4):
        logger.log(_metrics(step))
    logger.close({"loss": 0.5})
    assert run.logged == [1, 2, 3] and run.summary == {"loss": 0.5}
    assert _logger(tmp_path, monkeypatch, _Run("ok")).wandb_run_id == run_id
