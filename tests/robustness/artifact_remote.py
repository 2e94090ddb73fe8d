"""A misbehaving artifact server on loopback (http.server), for the artifact-bound tests.

Each route says what the server does: the body, the Content-Length it declares (or none:
the body then ends when the connection closes), whether it trickles, and where it stops
to wait for the test (`gate`). The server counts what it sent and how many GETs ran at
once, so a test can tell what the worker read without looking inside it.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

GATE_WAIT_S = 60.0  # a gate the test never opens ends the response after this
TRICKLE_BYTES, TRICKLE_EVERY_S = 16, 0.02  # ~800 bytes/s: far slower than any limit here


@dataclass
class Route:
    body: bytes
    length: int | None = -1  # declared Content-Length; -1: len(body); None: none at all
    trickle: bool = False
    pause_at: int | None = None  # send this many bytes (0: none), then wait for `gate`
    gate: threading.Event = field(default_factory=threading.Event)
    paused: threading.Event = field(default_factory=threading.Event)


@dataclass
class Remote:
    base: str = ""
    routes: dict[str, Route] = field(default_factory=dict)
    gets: dict[str, int] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    active: int = 0
    max_active: int = 0
    started: threading.Event = field(default_factory=threading.Event)  # a body began
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, name: str, query: str = "") -> str:
        return f"{self.base}/{name}" + (f"?{query}" if query else "")

    def serve(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        name = handler.path.lstrip("/").partition("?")[0]
        route = self.routes.get(name)
        with self.lock:
            self.gets[name] = self.gets.get(name, 0) + 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if route is None:
                handler.send_error(404)
                return
            handler.send_response(200)
            length = len(route.body) if route.length == -1 else route.length
            if length is not None:
                handler.send_header("Content-Length", str(length))
            handler.end_headers()
            handler.wfile.flush()
            self._body(handler, name, route)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the worker hung up: what these tests expect of a cut download
        finally:
            with self.lock:
                self.active -= 1

    def _body(self, handler: http.server.BaseHTTPRequestHandler, name: str, route: Route) -> None:
        if route.pause_at is None:
            self._send(handler, name, route, route.body)
            return
        self._send(handler, name, route, route.body[: route.pause_at])
        route.paused.set()
        route.gate.wait(GATE_WAIT_S)
        self._send(handler, name, route, route.body[route.pause_at :])

    def _send(
        self, handler: http.server.BaseHTTPRequestHandler, name: str, route: Route, data: bytes
    ) -> None:
        step = TRICKLE_BYTES if route.trickle else 1 << 14
        for i in range(0, len(data), step):
            if self.stop.is_set():
                return
            chunk = data[i : i + step]
            handler.wfile.write(chunk)
            handler.wfile.flush()
            self.started.set()
            with self.lock:
                self.sent[name] = self.sent.get(name, 0) + len(chunk)
            if route.trickle:
                time.sleep(TRICKLE_EVERY_S)  # the misbehaviour under test, not a sync


@contextmanager
def running_remote() -> Iterator[Remote]:
    remote = Remote()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            remote.serve(self)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, name="artifact-remote", daemon=True)
    thread.start()
    remote.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield remote
    finally:
        remote.stop.set()
        for route in remote.routes.values():
            route.gate.set()
        httpd.shutdown()
        httpd.server_close()
