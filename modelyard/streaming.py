"""Bounded server streams (issue #11, slow readers): a client that stops reading, or a
stream that outlasts its service's maximum, ends with DEADLINE_EXCEEDED naming the limit.

Why `context.write` and not `yield`: grpc.aio resumes a handler's async generator only
once the previous message went out, so a client whose flow-control window is full
simply never resumes it, and the handler cannot time that wait. Bounded handlers write
with `BoundedStream.write` (under the idle-write timeout) and yield nothing.

DEADLINE_EXCEEDED, not RESOURCE_EXHAUSTED: the stream ran out of time the server grants,
and RESOURCE_EXHAUSTED reads as "retry elsewhere" to the router and to client retry
policies, which would only start the same slow stream again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from modelyard.errors import DeadlineExceeded
from modelyard.limits import ServerLimits


class BoundedStream:
    """Writes one server stream's messages, each within the idle-write timeout, one at a
    time (a keepalive task may write too), and bounds the stream's whole duration."""

    def __init__(
        self, context: grpc.aio.ServicerContext[Any, Any], limits: ServerLimits, service: str
    ) -> None:
        self._context = context
        self._idle_s = limits.stream_idle_write_s
        self._max_s = limits.max_stream_s
        self._env = f"MODELYARD_{service.upper()}_LIMITS_"
        self._lock = asyncio.Lock()
        self.last_write = asyncio.get_running_loop().time()

    async def write(self, message: Any) -> None:
        """Send `message`; DEADLINE_EXCEEDED once the client has taken nothing for the
        idle-write timeout (the wait for another writer counts: it is the same stall)."""
        try:
            async with asyncio.timeout(self._idle_s):
                async with self._lock:
                    await self._context.write(message)
        except TimeoutError:
            raise DeadlineExceeded(
                f"the client read nothing for {self._idle_s:g} s "
                f"({self._env}STREAM_IDLE_WRITE_S); the stream was ended",
                reason="STREAM_IDLE_WRITE_TIMEOUT",
            ) from None
        self.last_write = asyncio.get_running_loop().time()

    @contextlib.asynccontextmanager
    async def bounded(self) -> AsyncIterator[None]:
        """The stream's body: DEADLINE_EXCEEDED once it has run for the maximum duration."""
        scope = asyncio.timeout(self._max_s)
        try:
            async with scope:
                yield
        except TimeoutError:
            if not scope.expired():
                raise
            raise DeadlineExceeded(
                f"the stream reached the longest a stream may last, {self._max_s:g} s "
                f"({self._env}MAX_STREAM_S); it was ended",
                reason="MAX_STREAM_DURATION",
            ) from None
