"""A DVC HTTP remote with basic authentication on loopback, for the credential tests.

DVC's ``http`` remote uploads with chunked POSTs and checks objects with HEAD; this server stores what
it is sent under ``root`` and answers 401 to any request without the right user and password. It
counts the requests it authorised, so a test can tell that the credentials really travelled.

    with HttpRemote(tmp_path / "remote", user="eve", password=secret) as remote:
        remote.url        # http://127.0.0.1:PORT/dvc (no credentials in it)
"""

from __future__ import annotations

import base64
import hmac
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


class HttpRemote:
    def __init__(self, root: Path, user: str, password: str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.expected = b"Basic " + base64.b64encode(f"{user}:{password}".encode())
        self.authorised = 0
        self.refused = 0
        remote = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # request lines (with paths only) are not needed
                pass

            def _path(self) -> Path | None:
                relative = unquote(urlsplit(self.path).path).lstrip("/")
                target = (remote.root / relative).resolve()
                return target if target.is_relative_to(remote.root.resolve()) else None

            def _authorised(self) -> bool:
                given = (self.headers.get("Authorization") or "").encode()
                if hmac.compare_digest(given, remote.expected):
                    remote.authorised += 1
                    return True
                remote.refused += 1
                self._drain()
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="dvc"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return False

            def _drain(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return bytes(body)
                        body += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reply(self, status: int, body: bytes = b"", head: bool = False) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def do_HEAD(self) -> None:
                if self._authorised():
                    path = self._path()
                    if path is not None and path.is_file():
                        self.send_response(200)
                        self.send_header("Content-Length", str(path.stat().st_size))
                        self.end_headers()
                    else:
                        self._reply(404, head=True)

            def do_GET(self) -> None:
                if self._authorised():
                    path = self._path()
                    if path is not None and path.is_file():
                        self._reply(200, path.read_bytes())
                    else:
                        self._reply(404)

            def do_POST(self) -> None:
                if self._authorised():
                    path, body = self._path(), self._drain()
                    if path is None:
                        self._reply(403)
                        return
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(body)
                    self._reply(200)

            do_PUT = do_POST

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/dvc"

    def url_with(self, user: str, password: str) -> str:
        return f"http://{user}:{password}@127.0.0.1:{self._server.server_address[1]}/dvc"

    def __enter__(self) -> "HttpRemote":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
