"""W&B mirrors metrics.jsonl and is never a reason to lose a step: when its service process dies mid-run
(killed, as a scheduler's SIGTERM to the whole job does), logging goes on in metrics.jsonl."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

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


@pytest.fixture
def own_wandb_process_state(monkeypatch):
    """A W&B process state of this test's own, restored afterwards.

    W&B keeps one setup per process (``wandb_setup._singleton``: settings read when it was made, and
    the connection to its service) and records a started service in ``WANDB_SERVICE``. Whatever an
    earlier test in this pytest process left there (a service it started, directories it set) would
    decide where this test's run goes, or whether it starts at all once a test killed that service. A
    training process runs one W&B run, so the product never meets this; tests sharing a process do."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR",
                 "WANDB_SERVICE"):
        monkeypatch.delenv(name, raising=False)  # restored after the test: use_wandb_dir sets them
    monkeypatch.setattr("wandb.sdk.wandb_setup._singleton", None)


def test_a_killed_wandb_service_stops_the_mirror_not_the_run(tmp_path, capsys, own_wandb_process_state):
    earlier_services = set(_children_named(os.getpid(), "wandb"))  # other tests' service: not ours to kill
    logger = MetricsLogger(
        tmp_path, rank=0, run_name="wandb-dies", total_steps=6, start_step=0, wandb_mode="offline",
        wandb_project="tests", wandb_dir=tmp_path / "wandb", run_config={},
    )
    assert logger.wandb_run_id is not None
    logger.log({"step": 1, "loss": 1.0})
    deadline = time.monotonic() + 30  # the writer thread starts the run in the background
    while not (services := set(_children_named(os.getpid(), "wandb")) - earlier_services) and time.monotonic() < deadline:
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


def test_a_stage_run_is_grouped_tagged_and_references_its_dataset_and_model_by_hash(tmp_path, own_wandb_process_state):
    """What `wandb sync` uploads later: the run in its retrain's group with recipe/stage/dataset tags, the
    step metrics, and the input dataset and final model as artifacts that point at the data (URI) and carry
    its content hash, never a copy of it."""
    from eve_model.training.metrics_logging import ArtifactReference, WandbRunLabels, reference_uri
    from tests.wandb_records import offline_runs, read_offline_run

    dataset, model = tmp_path / "dataset", tmp_path / "final"
    for folder, name in ((dataset, "manifest.json"), (model, "model.safetensors")):
        folder.mkdir()
        (folder / name).write_text("{}")
    logger = MetricsLogger(
        tmp_path, rank=0, run_name="tiny-stage-2", total_steps=2, start_step=0, wandb_mode="offline",
        wandb_project="tests", wandb_dir=tmp_path / "wandb", run_config={"stage": "2"}, stage="2",
        wandb_labels=WandbRunLabels(group="retrain-demo-20261203-101500",
                                    tags=["recipe:demo", "stage:2", "dataset:0123456789ab"]),
    )
    logger.reference_artifact(ArtifactReference(name="dataset-0123456789abcdef", kind="dataset", role="input",
                                                uri=reference_uri(str(dataset)), content_hash="0123456789abcdef" * 4))
    for step in (1, 2):
        logger.log({"step": step, "loss": 1.0 / step, "learning_rate": {"llm": 0.1}})
    logger.reference_artifact(ArtifactReference(name="eve-stage-2", kind="model", uri=reference_uri(str(model)),
                                                content_hash="f" * 64, metadata={"stage": "2"}))
    logger.close({"loss": 0.5})

    (run_dir,) = offline_runs(tmp_path / "wandb")
    # wandb-core may still be appending the last records to the offline file when finish() returns
    # (seen under load): read until both artifacts are there, or give up and let the asserts say what is missing.
    deadline = time.monotonic() + 30
    run = read_offline_run(run_dir)
    while len(run.artifacts) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
        run = read_offline_run(run_dir)
    assert (run.group, run.name) == ("retrain-demo-20261203-101500", "tiny-stage-2")
    assert run.tags == ["recipe:demo", "stage:2", "dataset:0123456789ab"]
    assert {"loss", "learning_rate/llm"} <= run.history_keys
    by_name = {a["name"]: a for a in run.artifacts}
    assert by_name["dataset-0123456789abcdef"]["type"] == "dataset"
    assert json.loads(by_name["dataset-0123456789abcdef"]["metadata"])["content_hash"] == "0123456789abcdef" * 4
    assert by_name["dataset-0123456789abcdef"]["references"] == [(dataset / "manifest.json").as_uri()]
    assert json.loads(by_name["eve-stage-2"]["metadata"])["content_hash"] == "f" * 64
    assert by_name["eve-stage-2"]["references"] == [(model / "model.safetensors").as_uri()]
