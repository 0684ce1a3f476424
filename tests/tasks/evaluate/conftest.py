"""Shared fixtures of the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_eve_dir(tiny_eve_checkpoint) -> Path:
    """The shared tiny random EVE directory (``tests/fixtures/tiny_eve.py``), under the name these tests use."""
    return tiny_eve_checkpoint
