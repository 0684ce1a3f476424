"""Two retrains of the small end-to-end recipe at once on one platform home and one real Prefect
server (docs/operations.md, "Concurrency"): both complete, every stage is trained once (the other run
waits for it and reuses it), both end with the same dataset and weights hashes, and the home holds no
private, partial or orphaned folder. Then the drill: the run training a stage is killed with kill -9
(its whole process group); the other run takes the stage over, waits for the orphaned job, resumes the
killed work and completes, and a later rerun reuses everything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.flows.test_retrain_e2e import _small_params  # noqa: F401 - the children use it

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
_CHILD = """
import sys
from pathlib import Path
from flows.retrain_flow import retrain
from tests.flows.test_retrain_e2e import _small_params
result = retrain(_small_params(Path(sys.argv[1]), mode="skip", pretrain_steps=6))
Path(sys.argv[2]).write_text(result.model_dump_json())
"""


def _start_retrain(demo_dir: Path, out_dir: Path, name: str) -> subprocess.Popen:
    """One retrain in its own process (and process group, as a deployment's flow run has)."""
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        # Two flow runs created at the same instant: the test server has answered POST /flow_runs/
        # with a 500 under such load (seen once here, and in main's CI; the fixture's fix is separate).
        # Prefect's client retries that status when told to, as it retries 429/502/503.
        "PREFECT_CLIENT_RETRY_EXTRA_CODES": "500",
    }
    log = open(out_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(demo_dir), str(out_dir / f"{name}.json")],
                            cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _finish(process: subprocess.Popen, out_dir: Path, name: str, timeout_seconds: float = 1200) -> dict:
    code = process.wait(timeout_seconds)
    log = (out_dir / f"{name}.log").read_text(errors="replace")
    assert code == 0, f"retrain {name} exited {code}:\n{log[-6000:]}"
    return json.loads((out_dir / f"{name}.json").read_text())


def _leftovers(home: Path) -> list[str]:
    """Private, partial or half-published folders and files, and lock records still held."""
    found = [str(p.relative_to(home)) for p in home.rglob("*")
             if ".tmp-" in p.name or p.name.endswith((".partial", ".tmp")) or ".staging" in p.name]
    found += [str(p.relative_to(home)) for p in home.rglob(".lock") if p.read_text().strip()]
    runs = home / "caption-runs"
    found += [str(p.relative_to(home)) for p in runs.iterdir()] if runs.exists() else []
    return found


def test_two_retrains_at_once_train_each_stage_once_and_agree(prefect_server, eve_home, tmp_path):
    from tasks.data.demo_source import DemoDataConfig, generate_demo_data

    demo_dir = generate_demo_data(tmp_path / "raw", DemoDataConfig.tiny())
    started = time.monotonic()
    runs = {name: _start_retrain(demo_dir, tmp_path, name) for name in ("a", "b")}
    a, b = (_finish(runs[name], tmp_path, name) for name in ("a", "b"))
    print(f"two retrains at once: {time.monotonic() - started:.0f} s")

    assert [s["stage"] for s in a["stages"]] == [s["stage"] for s in b["stages"]] == ["base-llm", "1", "2", "3"]
    for stage_a, stage_b in zip(a["stages"], b["stages"]):
        assert sorted([stage_a["skipped"], stage_b["skipped"]]) == [False, True], (stage_a, stage_b)  # trained once
        assert stage_a["weights_sha256"] == stage_b["weights_sha256"]
        assert stage_a["dataset_hash"] == stage_b["dataset_hash"]
        assert stage_a["output_dir"] == stage_b["output_dir"]
    assert a["candidate_version"] == b["candidate_version"] is not None  # same weights: one registration
    stage_folders = sorted(p.name for p in (eve_home / "runs" / "stages").iterdir())
    assert len(stage_folders) == 4, stage_folders  # one folder per stage key, nothing set aside
    assert _leftovers(eve_home) == []


def _stage_in_training(home: Path, timeout_seconds: float, runs: dict[str, subprocess.Popen],
                       out_dir: Path) -> tuple[Path, int]:
    """The first stage folder whose job has started, and the pid of the run holding its lock."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if all(process.poll() is not None for process in runs.values()):  # both ended: nothing to wait for
            tails = {name: (out_dir / f"{name}.log").read_text(errors="replace")[-2000:] for name in runs}
            raise AssertionError(f"both retrains ended before a stage job started: {tails}")
        for folder in sorted((home / "runs" / "stages").glob("stage-*")) if (home / "runs" / "stages").exists() else []:
            record = (folder / ".lock").read_text().strip() if (folder / ".lock").exists() else ""
            if record and list((folder / "logs").glob("local-*.pid")) and not (folder / "final").exists():
                return folder, json.loads(record)["pid"]
        time.sleep(0.2)
    raise AssertionError("no stage job started in time")


def test_a_run_killed_mid_stage_is_taken_over_and_a_rerun_resumes(prefect_server, eve_home, tmp_path):
    from tasks.data.demo_source import DemoDataConfig, generate_demo_data

    demo_dir = generate_demo_data(tmp_path / "raw", DemoDataConfig.tiny())
    runs = {name: _start_retrain(demo_dir, tmp_path, name) for name in ("a", "b")}
    folder, holder_pid = _stage_in_training(eve_home, timeout_seconds=900, runs=runs, out_dir=tmp_path)
    victim = next(name for name, process in runs.items() if process.pid == holder_pid)
    survivor = "b" if victim == "a" else "a"
    os.killpg(holder_pid, signal.SIGKILL)  # the flow run's whole process group, mid-stage
    assert runs[victim].wait(30) == -signal.SIGKILL

    completed = _finish(runs[survivor], tmp_path, survivor)
    log = (tmp_path / f"{survivor}.log").read_text(errors="replace")
    assert f"pid {holder_pid}" in log and "died before finishing; resuming its partial work" in log
    killed_stage = next(s for s in completed["stages"] if s["output_dir"] == str(folder))
    assert killed_stage["skipped"] is False  # the survivor finished the killed run's stage

    rerun = _start_retrain(demo_dir, tmp_path, "rerun")
    again = _finish(rerun, tmp_path, "rerun")
    assert [s["skipped"] for s in again["stages"]] == [True, True, True, True]
    assert [s["weights_sha256"] for s in again["stages"]] == [s["weights_sha256"] for s in completed["stages"]]
    assert _leftovers(eve_home) == []
