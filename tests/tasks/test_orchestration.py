"""``eve server stop`` stops only the processes this platform home started: the recorded PID must still
be the same process (kernel start time) carrying the recorded instance id on its command line."""

from __future__ import annotations

import json
import subprocess
import sys

from tasks.orchestration import is_recorded_process, process_start_ticks, stop_local_server
from tasks.platform import PlatformSettings


def _sleeper(*argv: str) -> subprocess.Popen:
    # Long enough to outlive the test on a loaded machine (it is killed at the end): a sleeper that had
    # already exited would make the "it is ours" check fail for the wrong reason.
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(900)", *argv], start_new_session=True)


def test_server_stop_spares_a_process_that_merely_has_the_recorded_pid(eve_home):
    settings = PlatformSettings.load()
    state_file = settings.path("prefect") / "server.json"
    stranger = _sleeper()
    ours = _sleeper("eve-server-0123456789abcdef")
    try:
        # The recorded PID is alive and its start time matches, but it is not the server we started.
        state_file.write_text(json.dumps({"pid": stranger.pid, "start_ticks": process_start_ticks(stranger.pid),
                                          "instance_id": "eve-server-0123456789abcdef"}))
        assert stop_local_server(settings) is False
        assert stranger.poll() is None
        # A reused PID (another start time) is never signalled either.
        state_file.write_text(json.dumps({"pid": stranger.pid, "start_ticks": 1, "instance_id": None}))
        assert stop_local_server(settings) is False and stranger.poll() is None

        record = {"pid": ours.pid, "start_ticks": process_start_ticks(ours.pid),
                  "instance_id": "eve-server-0123456789abcdef"}
        assert is_recorded_process(record)
        state_file.write_text(json.dumps(record))
        assert stop_local_server(settings) is True
        assert ours.wait(timeout=10) is not None and not state_file.exists()
    finally:
        for process in (stranger, ours):
            if process.poll() is None:
                process.kill()
                process.wait()
