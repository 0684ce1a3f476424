"""The tiny chain's loss curves against the committed recording (``loss_curves.py`` says how they are made
and regenerated; ``RELATIVE_TOLERANCE`` why 2e-3)."""

from __future__ import annotations

import json

import pytest

from tests.golden.loss_curves import CHAIN, GOLDEN_FILE, RECORDED_KEYS, RELATIVE_TOLERANCE, run_chain

pytestmark = pytest.mark.slow


def test_every_stage_reproduces_its_golden_loss_curve(tmp_path):
    recorded = json.loads(GOLDEN_FILE.read_text())["curves"]
    current = run_chain(tmp_path)
    assert set(current) == set(recorded) == {stage for stage, _ in CHAIN}
    for stage, steps in CHAIN:
        expected, actual = recorded[stage], current[stage]
        assert [row["step"] for row in actual] == [row["step"] for row in expected] == list(range(1, steps + 1)), stage
        for want, got in zip(expected, actual):
            for key in RECORDED_KEYS:
                if want[key] is None:
                    assert got[key] is None, (stage, want["step"], key)  # base-llm has no alignment loss
                else:
                    assert got[key] == pytest.approx(want[key], rel=RELATIVE_TOLERANCE), (stage, want["step"], key)
    # The recording itself is a learning curve, not a flat line that any code would match.
    assert recorded["base-llm"][-1]["loss"] < recorded["base-llm"][0]["loss"] - 1.0
    assert all(row["alignment_loss"] is not None for stage in ("1", "2", "3") for row in recorded[stage])
