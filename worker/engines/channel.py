"""A bounded one-way channel from an engine's decode thread to an asyncio consumer.

The thread `put`s events into a buffer; the consumer takes them in order. The loop is
woken (`call_soon_threadsafe`, a write to its self-pipe) only when the consumer is
parked waiting for an event: a consumer that is busy, or paced (the worker's stream
interval: `pause`), finds the tokens decoded meanwhile already there and takes them
without a wake each. Only tokens wait out a pause: any other event (the stream's end,
a failure) cuts it short. Credits bound how far the producer may run ahead of a slow
consumer, and a closed channel (the consumer went away) makes `put` return False at
once so the decode loop stops.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from modelyard.errors import InvalidArgument, internal_error
from worker.engines.base import EngineEvent, Finished, Piece

T = TypeVar("T")


@dataclass(frozen=True)
class DecodeFailed:
    """The decode thread raised; the consumer re-raises it on the event loop."""

    error: BaseException


class ChannelClosed(Exception):
    pass


class EventChannel(Generic[T]):
    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int = 256) -> None:
        self._loop = loop
        self._items: collections.deque[T] = collections.deque()
        self._lock = threading.Lock()
        self._waiter: asyncio.Future[None] | None = None  # set while the consumer is parked
        self._pause: asyncio.Future[None] | None = None  # set while it waits out an interval
        self._credits = threading.Semaphore(capacity)
        self._closed = threading.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def close(self) -> None:
        """Consumer side: stop accepting events; a producer waiting for credit gives up."""
        self._closed.set()
        self._credits.release()  # wake a producer blocked on a full channel

    def put(self, item: T) -> bool:
        """Producer side (any thread): deliver `item`; False once the consumer has gone."""
        while not self._credits.acquire(timeout=0.05):
            if self._closed.is_set():
                return False
        if self._closed.is_set():
            return False
        with self._lock:
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
            if waiter is None and self._pause is not None and not isinstance(item, Piece):
                waiter, self._pause = self._pause, None
        if waiter is None:
            return True
        try:
            self._loop.call_soon_threadsafe(_wake, waiter)
        except RuntimeError:  # the loop is closed: nobody will read
            self._closed.set()
            return False
        return True

    def ready(self) -> int:
        """Events waiting: `get` returns that many without suspending."""
        return len(self._items)

    async def pause(self, seconds: float) -> None:
        """Consumer side: let tokens gather for up to `seconds`; returns at once if any
        other event is waiting, and as soon as one is put."""
        loop = self._loop
        with self._lock:
            if any(not isinstance(item, Piece) for item in self._items):
                return
            pause = self._pause = loop.create_future()
        timer = loop.call_later(seconds, _wake, pause)
        try:
            await pause
        finally:
            timer.cancel()
            with self._lock:
                if self._pause is pause:
                    self._pause = None

    async def get(self) -> T:
        while True:
            with self._lock:
                if self._items:
                    item = self._items.popleft()
                    break
                waiter = self._waiter = self._loop.create_future()
            await waiter
        self._credits.release()
        return item


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():  # a consumer cancelled while parked left it behind
        waiter.set_result(None)


async def engine_events(
    channel: EventChannel[EngineEvent | DecodeFailed], engine_name: str, interval_s: float = 0.0
) -> AsyncIterator[EngineEvent]:
    """A job's events as its decode thread sends them, through Finished; INTERNAL if it
    failed. With `interval_s`, once a token has gone, each time the events waiting are
    taken it pauses for the rest of the interval before taking more: the tokens decoded
    meanwhile then come one after another without a wake each, and the stream writer
    joins them into one delta. The stream's end is never held back (`pause`)."""
    loop = asyncio.get_running_loop()
    paced_at: float | None = None  # when the events waiting were last taken
    while True:
        if paced_at is not None and not channel.ready():
            delay = paced_at + interval_s - loop.time()
            if delay > 0:
                await channel.pause(delay)
            paced_at = loop.time()
        event = await channel.get()
        if isinstance(event, DecodeFailed):
            if isinstance(event.error, InvalidArgument):  # the request's fault, told as such
                raise event.error
            raise internal_error(f"the {engine_name} engine", event.error) from event.error
        yield event
        if isinstance(event, Finished):
            return
        if paced_at is None and interval_s > 0 and isinstance(event, Piece) and event.token_ids:
            paced_at = loop.time()
