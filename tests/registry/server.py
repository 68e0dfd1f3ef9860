"""A small HTTP server on 127.0.0.1 for download tests, with switchable misbehaviour.

Serves files registered by path. Supports `Range: bytes=N-` (206 with Content-Range) unless told to
ignore ranges. Faults, each for the first `n` requests: drop the connection after some body bytes,
answer with an error status, serve different bytes of the same length. Every request's path and
Range header are recorded for assertions.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Behaviour:
    drop_after: int | None = None  # close the connection after this many body bytes…
    drops: int = 0  # …on this many requests
    status: list[int] = field(default_factory=list)  # answer these statuses first, one per request
    corrupt: bool = False  # flip bytes of the body (same length)
    ignore_range: bool = False
    redirect: dict[str, str] = field(default_factory=dict)  # path -> location
    range_shift: int = 0  # resume this many bytes away from the requested start (and say so)


@dataclass
class LocalServer:
    host: str
    port: int
    files: dict[str, bytes]
    behaviour: Behaviour
    requests: list[tuple[str, str | None]]

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"


_RANGE = re.compile(r"bytes=(\d+)-$")


def _handler(state: LocalServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            b = state.behaviour
            state.requests.append((self.path, self.headers.get("Range")))
            if self.path in b.redirect:
                self.send_response(302)
                self.send_header("Location", b.redirect[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if b.status:
                code = b.status.pop(0)
                self.send_error(code)
                return
            data = state.files.get(self.path)
            if data is None:
                self.send_error(404)
                return
            if b.corrupt:
                data = bytes(x ^ 0x5A for x in data)
            start = 0
            m = _RANGE.match(self.headers.get("Range", ""))
            if m and not b.ignore_range:
                start = max(0, int(m.group(1)) + b.range_shift)
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if b.drops > 0 and b.drop_after is not None:
                b.drops -= 1
                self.wfile.write(body[: b.drop_after])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

    return Handler


@contextmanager
def serve(files: dict[str, bytes], behaviour: Behaviour | None = None) -> Iterator[LocalServer]:
    """Run a server in a thread for the duration of the block."""
    state = LocalServer("127.0.0.1", 0, files, behaviour or Behaviour(), [])
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def refused_url(path: str = "/file.bin") -> str:
    """An address on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


@contextmanager
def silent_server() -> Iterator[str]:
    """A socket that accepts connections (kernel backlog) but never answers: requests time out."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"http://127.0.0.1:{s.getsockname()[1]}/file.bin"
