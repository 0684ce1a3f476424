"""The local server that the platform starts must be the one that answers: a port found free can be
bound by another process first (seen on a shared machine: another engineer's unauthenticated Prefect
server took 4200 between the probe and the bind, and a retrain then ran on it with no error)."""

from __future__ import annotations

import http.server
import threading

import pytest

from tasks.orchestration import PrefectServerError, _healthy, start_local_server
from tasks.platform import PlatformSettings


class _ForeignHealth(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args):
        pass


@pytest.fixture
def foreign_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ForeignHealth)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def test_a_foreign_server_on_the_port_is_never_taken_for_ours(eve_home, foreign_server):
    api_url = f"http://127.0.0.1:{foreign_server}/api"
    assert _healthy(api_url)  # it answers the probe...
    assert not _healthy(api_url, instance_id="eve-server-0123")  # ...but not as our instance
    with pytest.raises(PrefectServerError, match="exited with code"):
        start_local_server(PlatformSettings.load(), foreign_server, startup_timeout_seconds=120)
