"""Root test configuration.

Every module in tests/fixtures/ is loaded as a pytest plugin, so fixtures for real services
(SeaweedFS S3, a single-node SLURM cluster, a Prefect server) are shared by all test folders.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_FIXTURES = Path(__file__).parent / "fixtures"
pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in _FIXTURES.glob("*.py") if not p.name.startswith("_")
)

# Keep third-party telemetry and hub lookups off in every test process.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# DVC binds its log handlers to the sys.stdout of the moment it is first imported. Import it once for
# the session, so that the stream of a test's capsys (closed after that test) never becomes DVC's and
# no later test fails with "I/O operation on closed file" depending on the order tests run in.
import dvc.repo  # noqa: E402,F401

# Prefect configures its console log handler when first imported, bound to the sys.stderr of that
# moment: first imported inside a test that captures output (a CLI test with capsys), every later
# flow's log line goes to a closed stream. Same remedy: import it once for the session.
import prefect  # noqa: E402,F401


@pytest.fixture
def eve_home(tmp_path, monkeypatch) -> Path:
    """A fresh platform home for one test."""
    home = tmp_path / "eve-home"
    home.mkdir()
    monkeypatch.setenv("EVE_HOME", str(home))
    return home
