"""The numbers a worker's status is built from, and the signal that they changed.

Engines update `SequenceCounters` from their decode thread; WatchStatus waits on
`ChangeNotifier`. Both are thread-safe so no engine has to hop to the event loop
to count a token.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from dataclasses import dataclass

RATE_WINDOW_S = 5.0


@dataclass(frozen=True)
class CounterSnapshot:
    running_sequences: int = 0
    queued_requests: int = 0
    queued_tokens: int = 0
    generated_tokens_total: int = 0
    tokens_per_second: float = 0.0
    prompt_tokens_total: int = 0
    cached_prompt_tokens_total: int = 0


class ChangeNotifier:
    """A version number that bumps on every status change, awaitable from the event loop.

    `notify()` may be called from any thread; waiters live on the loop that first waited.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self.closed = False

    @property
    def version(self) -> int:
        return self._version

    def close(self) -> None:
        """Shutting down: wake every waiter for good, so status watches can end."""
        self.closed = True
        self.notify()

    def notify(self) -> None:
        with self._lock:
            self._version += 1
            loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake()
        else:
            loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        # Swap the event so waiters that arrive after this wake-up wait for the next one.
        event, self._event = self._event, None
        if event is not None:
            event.set()

    async def wait(self, since: int, within_s: float) -> int:
        """Return the version once it differs from `since`, or after `within_s` seconds."""
        self._loop = asyncio.get_running_loop()
        if self._version != since or self.closed:
            return self._version
        if self._event is None:
            self._event = asyncio.Event()
        event = self._event
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await event.wait()
        return self._version


class SequenceCounters:
    """Queue, running and token counters of one model, kept across reloads."""

    def __init__(self, notifier: ChangeNotifier | None = None) -> None:
        self._lock = threading.Lock()
        self._notifier = notifier
        self._queued_requests = 0
        self._queued_tokens = 0
        self._running = 0
        self._generated_total = 0
        self._prompt_total = 0
        self._cached_prompt_total = 0
        # (whole second, tokens in it) buckets for the short throughput window.
        self._buckets: collections.deque[tuple[int, int]] = collections.deque()

    def enqueued(self, tokens: int) -> None:
        with self._lock:
            self._queued_requests += 1
            self._queued_tokens += tokens
        self._changed()

    def dequeued(self, tokens: int) -> None:
        with self._lock:
            self._queued_requests -= 1
            self._queued_tokens -= tokens
        self._changed()

    def started(self) -> None:
        with self._lock:
            self._running += 1
        self._changed()

    def finished(self) -> None:
        with self._lock:
            self._running -= 1
        self._changed()

    def generated(self, tokens: int = 1) -> None:
        # Not a status change on its own: heartbeats carry throughput.
        second = int(time.monotonic())
        with self._lock:
            self._generated_total += tokens
            if self._buckets and self._buckets[-1][0] == second:
                self._buckets[-1] = (second, self._buckets[-1][1] + tokens)
            else:
                self._buckets.append((second, tokens))
            self._trim(second)

    def prompt(self, tokens: int, cached: int) -> None:
        """A finished request's prompt and the part of it the prefix cache served."""
        # Not a status change on its own: the finish that comes with it is one.
        with self._lock:
            self._prompt_total += tokens
            self._cached_prompt_total += cached

    def snapshot(self) -> CounterSnapshot:
        now = int(time.monotonic())
        with self._lock:
            self._trim(now)
            recent = sum(n for _, n in self._buckets)
            return CounterSnapshot(
                running_sequences=self._running,
                queued_requests=self._queued_requests,
                queued_tokens=self._queued_tokens,
                generated_tokens_total=self._generated_total,
                tokens_per_second=recent / RATE_WINDOW_S,
                prompt_tokens_total=self._prompt_total,
                cached_prompt_tokens_total=self._cached_prompt_total,
            )

    def _trim(self, now: int) -> None:
        while self._buckets and self._buckets[0][0] <= now - RATE_WINDOW_S:
            self._buckets.popleft()

    def _changed(self) -> None:
        if self._notifier is not None:
            self._notifier.notify()
