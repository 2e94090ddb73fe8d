"""A bounded one-way channel from an engine's decode thread to an asyncio consumer.

The thread `put`s events; each lands in an asyncio.Queue through
`call_soon_threadsafe`, so the consumer sees every token as soon as it is decoded.
Credits bound how far the producer may run ahead of a slow consumer, and a
closed channel (the consumer went away) makes `put` return False at once so the
decode loop stops.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from modelyard.errors import InvalidArgument, internal_error
from worker.engines.base import EngineEvent, Finished

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
        self._queue: asyncio.Queue[T] = asyncio.Queue()
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
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody will read
            self._closed.set()
            return False
        return True

    async def get(self) -> T:
        item = await self._queue.get()
        self._credits.release()
        return item


async def engine_events(
    channel: EventChannel[EngineEvent | DecodeFailed], engine_name: str
) -> AsyncIterator[EngineEvent]:
    """A job's events as its decode thread sends them, through Finished; INTERNAL if it failed."""
    while True:
        event = await channel.get()
        if isinstance(event, DecodeFailed):
            if isinstance(event.error, InvalidArgument):  # the request's fault, told as such
                raise event.error
            raise internal_error(f"the {engine_name} engine", event.error) from event.error
        yield event
        if isinstance(event, Finished):
            return
