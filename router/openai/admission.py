"""What a request to the OpenAI front passes before the app reads its body.

In order: the API key (from the headers alone), the declared body size, a slot under the
concurrency limit. Then the body is counted as it arrives (a chunked body declares no
size) and cut off at the limit. A response that starts before the whole body arrived
closes the connection: otherwise the server would go on reading, and discarding, the rest
of a body it refused (uvicorn drains it to keep the connection alive).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.openai.errors import OpenAIError, busy, too_large

# Refuses a request by raising OpenAIError; it sees the headers, never the body.
Authorize = Callable[[Request], None]

_CLOSE = (b"connection", b"close")


@dataclass(frozen=True)
class FrontLimits:
    max_body_bytes: int = 4 * 1024 * 1024
    max_concurrency: int = 256


class Admission:
    """ASGI middleware: authorize, then admit under `limits`, then serve."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        authorize: Authorize,
        limits: FrontLimits,
        open_paths: frozenset[str] = frozenset(),
    ) -> None:
        self._app = app
        self._authorize = authorize
        self._limits = limits
        self._open_paths = open_paths  # probes and scrapes: no key, never refused as busy
        self._in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self._open_paths:
            await self._app(scope, receive, send)
            return
        body = _CountedBody(scope, receive, send, self._limits.max_body_bytes)
        try:
            self._admit(scope)
        except OpenAIError as refusal:
            await refusal.response()(scope, body.receive, body.send)
            return
        self._in_flight += 1
        try:
            await self._app(scope, body.receive, body.send)
        except OpenAIError as refusal:  # the app had no handler for it (it has today)
            if body.response_started:
                raise
            await refusal.response()(scope, body.receive, body.send)
        finally:
            self._in_flight -= 1

    def _admit(self, scope: Scope) -> None:
        # A Request without a receive channel: reading the body here would fail loudly.
        self._authorize(Request(scope))
        declared = _content_length(scope)
        if declared is not None and declared > self._limits.max_body_bytes:
            raise too_large(self._limits.max_body_bytes)
        if self._in_flight >= self._limits.max_concurrency:
            raise busy()


class _CountedBody:
    """The receive and send of one request: counts the body, closes when it was cut short."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        self._receive = receive
        self._send = send
        self._limit = limit
        self._received = 0
        headers = Headers(scope=scope)
        self._pending = "transfer-encoding" in headers or bool(_content_length(scope))
        self.response_started = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if not message.get("more_body", False):
                self._pending = False
            if self._received > self._limit:
                raise too_large(self._limit)
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.response_started = True
            if self._pending:
                message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
        await self._send(message)


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    return int(value) if value is not None and value.isdigit() else None
