"""Fixtures shared by the model-library tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def single_torch_thread():
    """One intra-op thread: on the shared 2-core machine, 2 spinning OpenMP threads run ~10x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
