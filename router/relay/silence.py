"""How long a worker's Generate stream may stay silent (issue #11, frozen workers).

A worker that acknowledges its calls (GenerationAccepted) sends a keepalive whenever it
has sent nothing for its interval, so silence means a frozen process or a dead path,
never a cold load or a queue wait. The rule applies only to workers known to send them:
those whose pushed status advertises `generate_keepalive_interval`, or whose call just
sent GenerationAccepted. An older worker (mixed-version upgrade) is never timed; its
stopped process is still found by the channel's HTTP/2 keepalive pings.

Two bounds: before the first token a silent attempt is abandoned and the request goes
to the next candidate (nothing was sent: safe); after it the stream ends UNAVAILABLE,
so that bound is longer, for a worker whose event loop stalls a moment between tokens
(a long decode step) to cost nothing. Neither goes under twice the worker's interval.
A silence the caller's deadline ends first is the deadline's (DEADLINE_EXCEEDED, the
worker not blamed), so the timer runs only while more than its bound is left.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from modelyard.v1 import worker_pb2

WorkerEvent = worker_pb2.WorkerServiceGenerateResponse

# Events that say "alive" and nothing else: never relayed.
LIVENESS = frozenset({"accepted", "keepalive"})


class Silent(Exception):
    """The worker sent nothing for `after_s` seconds."""

    def __init__(self, after_s: float) -> None:
        super().__init__(f"sent nothing for {after_s:.1f}s")
        self.after_s = after_s


@dataclass
class SilenceWatch:
    """The silence bounds of one attempt, and what the worker has shown of itself."""

    before_first_s: float
    after_first_s: float
    interval_s: float | None = None  # the worker's keepalive interval, once known
    committed: bool = False  # the first token went to the client
    deadline: float | None = None  # the caller's, on `clock`
    clock: Callable[[], float] = field(default=time.monotonic)

    @classmethod
    def for_status(
        cls,
        status: worker_pb2.WorkerStatus | None,
        bounds: tuple[float, float],
        deadline: float | None,
        clock: Callable[[], float],
    ) -> SilenceWatch:
        interval = None
        if status is not None and status.HasField("generate_keepalive_interval"):
            interval = status.generate_keepalive_interval.ToNanoseconds() / 1e9
        return cls(*bounds, interval, deadline=deadline, clock=clock)

    def timeout_s(self) -> float | None:
        if self.interval_s is None:
            return None  # a worker that never said it sends keepalives is not timed
        bound = self.after_first_s if self.committed else self.before_first_s
        bound = max(bound, 2 * self.interval_s)
        if self.deadline is not None and self.deadline - self.clock() <= bound:
            return None  # the caller's deadline comes first
        return bound

    async def next(self, events: AsyncIterator[WorkerEvent]) -> WorkerEvent | None:
        """The next event (None at the end); `Silent` past the bound."""
        timeout = self.timeout_s()
        if timeout is None:
            event = await anext(events, None)
        else:
            try:
                async with asyncio.timeout(timeout):
                    event = await anext(events, None)
            except TimeoutError:
                raise Silent(timeout) from None
        if event is not None and event.WhichOneof("event") == "accepted":
            interval = event.accepted.keepalive_interval.ToNanoseconds() / 1e9
            self.interval_s = interval if interval > 0 else self.before_first_s / 2
        return event
