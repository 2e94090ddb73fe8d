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
import collections
import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, Generic, Literal, Protocol, TypeVar

import grpc

from modelyard.errors import DeadlineExceeded
from modelyard.limits import ServerLimits
from modelyard.v1 import common_pb2


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


class Event(Protocol):
    """A generation stream's event: router and worker events share this shape."""

    @property
    def delta(self) -> common_pb2.TokenDelta: ...

    def WhichOneof(self, name: Literal["event"]) -> str | None: ...

    def CopyFrom(self, other: Any) -> None: ...


E = TypeVar("E", bound=Event)


def joinable(a: Event, b: Event) -> bool:
    """Both plain deltas (tool-call deltas keep their own message: clients index them)."""
    return (
        a.WhichOneof("event") == "delta"
        and b.WhichOneof("event") == "delta"
        and not a.delta.tool_calls
        and not b.delta.tool_calls
    )


def join(into: Event, new: Event) -> None:
    """Append `new`'s tokens to the delta `into`."""
    a, b = into.delta, new.delta
    a.text += b.text
    a.token_ids.extend(b.token_ids)
    a.logprobs.extend(b.logprobs)


class CoalescingWriter(Generic[E]):
    """Writes a generation stream's events from a task of its own, so the producer never
    waits on the client, and joins the deltas that queue up meanwhile: when the client
    reads slower than tokens come, the tokens waiting go out as one delta. An idle writer
    sends at once, so the first token (and every token of a paced stream) is never
    delayed. A joined delta is the writer's own copy: the producer's events (which a
    response cache may hold) are never changed.

    `put` raises the write's error (DeadlineExceeded for a client that stopped reading);
    `flush` waits until everything is written; `cancel` drops what is left."""

    def __init__(self, out: BoundedStream) -> None:
        self._out = out
        self._queue: collections.deque[E] = collections.deque()
        self._last_owned = False  # the queue's last event is a copy joins may change
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def put(self, event: E) -> None:
        task = self._task
        if task is None:
            self._task = asyncio.create_task(self._run())
        elif task.done():
            task.result()  # the write failed: its error, here
            raise RuntimeError("put after the writer finished")
        queue = self._queue
        if queue and joinable(queue[-1], event):
            if not self._last_owned:
                last = type(event)()
                last.CopyFrom(queue[-1])
                queue[-1] = last
                self._last_owned = True
            join(queue[-1], event)
            return
        queue.append(event)
        self._last_owned = False
        self._ready.set()

    async def write_all(self, events: AsyncIterable[E]) -> None:
        """Every event of `events`, then flush. When `events` fails, what it produced
        before still goes out first (a client told "failed after N tokens" has them);
        on cancellation what is left is dropped."""
        try:
            try:
                async for event in events:
                    self.put(event)
            except Exception:
                with contextlib.suppress(Exception):
                    await self.flush()
                raise
            await self.flush()
        finally:
            self.cancel()

    async def flush(self) -> None:
        self._closing = True
        self._ready.set()
        if self._task is not None:
            await self._task

    def cancel(self) -> None:
        task = self._task
        if task is None:
            return
        if not task.done():
            task.cancel()
        elif not task.cancelled():
            task.exception()  # retrieved: the producer's own error is the one reported

    async def _run(self) -> None:
        queue = self._queue
        while True:
            if not queue:
                if self._closing:
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            await self._out.write(queue.popleft())
