"""Kill -9 at each point of the production assignment step: the state left behind is one ``eve audit
verify`` accepts, and a retry completes the promotion exactly once (the step is completed forward when
its tag exists, rolled back when it does not).

The step runs in a child process told by ``EVE_KILL_AT=assign:<point>`` (``tasks.registry.KILL_POINT_ENV``)
to SIGKILL itself right after that point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import audit
from tasks.registry import ASSIGNMENT_STEPS, KILL_POINT_ENV
from tasks.verification import verify_platform
from tests.fixtures.model_registry import authorised_approvals
from tests.fixtures.promotion_runs import registry_with_production

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[3]
ASSIGN = """
import json, sys
from tasks.lineage.schema import ApprovalRecord
from tasks.registry import ModelRegistry
approvals = [ApprovalRecord.model_validate(a) for a in json.loads(sys.argv[2])]
print(ModelRegistry().assign_production(sys.argv[1], approvals))
"""


@pytest.mark.parametrize("point", ASSIGNMENT_STEPS)
def test_kill_9_at_each_point_leaves_a_verifiable_state_and_a_retry_completes(point, eve_home, registry_inputs):
    registry = registry_with_production(registry_inputs)
    approvals = authorised_approvals(registry, "v0.2.0")
    env = {
        **os.environ,
        KILL_POINT_ENV: f"assign:{point}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    killed = subprocess.run(
        [sys.executable, "-c", ASSIGN, "v0.2.0", json.dumps([a.model_dump(mode="json") for a in approvals])],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    tag_written = ASSIGNMENT_STEPS.index(point) >= ASSIGNMENT_STEPS.index("tag")
    assert registry.production_version() == ("v0.2.0" if tag_written else "v0.1.0")
    report = verify_platform()
    assert report.ok, report.problems  # the interrupted state is a consistent one
    if point in ("intent", "tag", "lineage"):
        assert any("interrupted" in note for note in report.notes), report.notes

    tag = registry.assign_production("v0.2.0", approvals)  # the retry
    assert tag == "eve#production#2"
    assert registry.production_version() == "v0.2.0"
    records = registry.audit_log.records()
    assigned = [r for r in records if r.event == audit.PRODUCTION_ASSIGNED and r.subject == "eve@v0.2.0"]
    assert len(assigned) == 1 and assigned[0].payload["stage_tag"] == tag
    assert assigned[0].payload["recovered"] == (point in ("tag", "lineage"))
    intents = [r.payload["intent_id"] for r in records if r.event == audit.ASSIGNMENT_INTENT]
    closed = {r.payload["intent_id"] for r in records
              if r.event in (audit.PRODUCTION_ASSIGNED, audit.ASSIGNMENT_ABORTED)}
    assert set(intents) == closed  # nothing left half done
    assert [a.audit_record_hash for a in registry.lineage("v0.2.0").approvals] == [approvals[0].audit_record_hash]
    assert [t.name for t in registry.tags() if t.name.startswith("eve#production")] == [
        "eve#production#1", "eve#production#2"
    ]
    final = verify_platform()
    assert final.ok and not final.notes, (final.problems, final.notes)
