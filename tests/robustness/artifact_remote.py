"""A misbehaving artifact server on loopback (http.server), for the artifact-bound tests.

Each route says what the server does: the body, the Content-Length it declares (or none:
the body then ends when the connection closes), whether it trickles, and where it stops
to wait for the test (`gate`). The server counts the GETs, the bytes it sent (counted
before each write) and what had been sent when each GET came, so a test can tell what
the worker read without looking inside it.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from modelyard.v1 import model_pb2
from worker.artifacts import ArtifactSettings, ArtifactStore

WAIT_S = 30.0  # bound on every poll of the tests
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
    # What had been sent of every route when each route's GET arrived.
    sent_before: dict[str, dict[str, int]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, name: str, query: str = "") -> str:
        return f"{self.base}/{name}" + (f"?{query}" if query else "")

    def serve(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        name = handler.path.lstrip("/").partition("?")[0]
        route = self.routes.get(name)
        with self.lock:
            self.gets[name] = self.gets.get(name, 0) + 1
            self.sent_before[name] = dict(self.sent)
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
            with self.lock:  # counted before the write: a client never holds uncounted bytes
                self.sent[name] = self.sent.get(name, 0) + len(chunk)
            handler.wfile.write(chunk)
            handler.wfile.flush()
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


def store_at(tmp_path: Path, **limits: float) -> ArtifactStore:
    settings = ArtifactSettings(cache_dir=tmp_path / "cache", timeout_s=60.0).model_copy(
        update=limits
    )
    return ArtifactStore(settings)


def artifact(uri: str, body: bytes | None = None, **fields: object) -> model_pb2.Artifact:
    sha = hashlib.sha256(body).hexdigest() if body is not None else ""
    return model_pb2.Artifact(uri=uri, **{"sha256": sha, **fields})  # type: ignore[arg-type]


async def until(done: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not done():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)
