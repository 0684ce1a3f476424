"""``eve cluster up/status/down`` on its own base directory and ports: a real cluster, then gone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main

pytestmark = pytest.mark.slow


@pytest.fixture
def private_cluster(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("the SLURM cluster needs root")
    base_dir = Path("/tmp") / f"eve-slurm-cli-{os.getpid()}"  # short: the munge socket path has a length limit
    monkeypatch.setenv("EVE_SLURM_PORT", "18817")
    yield base_dir
    main(["cluster", "down", "--base-dir", str(base_dir), "--purge"])


def _pids(base_dir: Path) -> list[int]:
    files = [*(base_dir / "run").glob("*.pid"), *(base_dir / "munge" / "run").glob("*.pid"), *(base_dir / "mysql" / "run").glob("*.pid")]
    return [int(f.read_text()) for f in files]


def test_up_status_submit_down(private_cluster):
    base_dir = private_cluster
    assert main(["cluster", "status", "--base-dir", str(base_dir)]) == 3
    assert main(["cluster", "up", "--base-dir", str(base_dir)]) == 0
    assert main(["cluster", "up", "--base-dir", str(base_dir)]) == 0  # idempotent
    assert main(["cluster", "status", "--base-dir", str(base_dir)]) == 0
    daemons = _pids(base_dir)
    assert len(daemons) == 5  # munged, MariaDB, slurmdbd, slurmctld, one slurmd

    # Accounting answers as on a real cluster.
    environment = dict(os.environ, SLURM_CONF=str(base_dir / "etc" / "slurm.conf"))
    clusters = subprocess.run(["sacctmgr", "-n", "-P", "list", "cluster", "format=cluster"],
                              capture_output=True, text=True, env=environment, timeout=60)
    assert clusters.stdout.split() == ["eve-local"], clusters.stderr

    environment = dict(os.environ, SLURM_CONF=str(base_dir / "etc" / "slurm.conf"))
    job = subprocess.run(["srun", "-N1", sys.executable, "-c", "print('hello from srun')"],
                         capture_output=True, text=True, env=environment, timeout=60)
    assert job.stdout.strip() == "hello from srun", job.stderr

    assert main(["cluster", "down", "--base-dir", str(base_dir)]) == 0
    assert main(["cluster", "status", "--base-dir", str(base_dir)]) == 3
    for pid in daemons:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
