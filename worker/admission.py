"""Admission: per-model request queues with priority levels, bounds, shedding, deadlines, slots.

The worker's one admission point: engines take what the queue grants them.

A request takes a `Ticket` on arrival. The queue grants tickets a decoding slot
(the engine's parallel sequences) highest priority first, FIFO within a level,
and only while the model is warm (`set_slots`). The waiting requests are bounded
by count and by tokens (prompt + max_tokens): a request that does not fit is
RESOURCE_EXHAUSTED at once, unless shedding queued requests of a strictly lower
priority (lowest first, newest first within a level) makes room; those end with
RESOURCE_EXHAUSTED instead. Everything runs on the event loop: no locks.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import itertools
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from modelyard.errors import DeadlineExceeded, ModelyardError, ResourceExhausted
from modelyard.v1 import common_pb2
from worker.counters import SequenceCounters

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1.0

T = TypeVar("T")


def effective_priority(priority: common_pb2.Priority.ValueType) -> int:
    """UNSPECIFIED counts as NORMAL; higher is more urgent (LOW=1 .. CRITICAL=4)."""
    return int(priority) if priority != common_pb2.PRIORITY_UNSPECIFIED else 2


async def within(deadline: float | None, awaitable: Awaitable[T], doing: str) -> T:
    """Await within `deadline` (monotonic seconds); DEADLINE_EXCEEDED saying what it waited for."""
    if deadline is None:
        return await awaitable
    try:
        async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
            return await awaitable
    except TimeoutError:
        raise DeadlineExceeded(f"the deadline passed while {doing}") from None


class TicketState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"


_sequence = itertools.count()


@dataclass(eq=False)
class Ticket:
    priority: int
    tokens: int
    seq: int = field(default_factory=lambda: next(_sequence))
    state: TicketState = TicketState.WAITING
    granted: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class RequestQueue:
    def __init__(
        self,
        key: str,
        counters: SequenceCounters,
        *,
        max_requests: int,
        max_tokens: int,
    ) -> None:
        self.key = key
        self._counters = counters
        self.max_requests = max_requests
        self.max_tokens = max_tokens
        self._waiting: list[Ticket] = []
        self._tokens = 0
        self._slots = 0
        self.running = 0
        self.shed_total = 0
        # Requests refused or ended by the queue, by reason: queue_full (refused at once),
        # too_large (more tokens than the queue holds), shed, deadline.
        self.rejected: collections.Counter[str] = collections.Counter()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def waiting_tokens(self) -> int:
        return self._tokens

    def submit(self, priority: common_pb2.Priority.ValueType, tokens: int) -> Ticket:
        """Queue a request or refuse it at once (RESOURCE_EXHAUSTED); may shed lower ones."""
        ticket = Ticket(effective_priority(priority), tokens)
        if tokens > self.max_tokens:
            self.rejected["too_large"] += 1
            raise self._exhausted(
                f"the request needs {tokens} tokens (prompt + max_tokens, or its expected "
                f"output without max_tokens) but {self.key}'s queue holds at most {self.max_tokens}"
            )
        victims = self._victims_for(ticket)
        if victims is None:
            self.rejected["queue_full"] += 1
            raise self._exhausted(
                f"{self.key} has {len(self._waiting)} requests ({self._tokens} tokens) queued "
                f"at this priority or above (limits {self.max_requests} requests, "
                f"{self.max_tokens} tokens)"
            )
        for victim in victims:
            self._remove(victim)
            self.shed_total += 1
            self.rejected["shed"] += 1
            victim.state = TicketState.DONE
            victim.granted.set_exception(
                self._exhausted(f"shed from {self.key}'s full queue by a higher-priority request")
            )
        self._waiting.append(ticket)
        self._tokens += tokens
        self._counters.enqueued(tokens)
        self._dispatch()
        return ticket

    async def wait(self, ticket: Ticket, deadline: float | None) -> None:
        """Until the ticket holds a slot; DEADLINE_EXCEEDED (and out of the queue) at `deadline`."""
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(ticket.granted)
        except TimeoutError:
            self.leave(ticket)
            self.rejected["deadline"] += 1
            raise DeadlineExceeded(
                f"the deadline passed while waiting in {self.key}'s queue"
            ) from None
        except BaseException:
            self.leave(ticket)
            raise

    def leave(self, ticket: Ticket) -> None:
        """The request is over (finished, cancelled, timed out): free its place or its slot."""
        if ticket.granted.done() and not ticket.granted.cancelled():
            ticket.granted.exception()  # retrieved: a shed or failed ticket is not an orphan
        if ticket.state is TicketState.WAITING:
            self._remove(ticket)
            ticket.granted.cancel()
        elif ticket.state is TicketState.RUNNING:
            self.running -= 1
            self._dispatch()
        ticket.state = TicketState.DONE

    def set_slots(self, slots: int) -> None:
        """How many requests may run at once (0 while the model is not warm)."""
        self._slots = slots
        self._dispatch()

    def fail_waiting(self, error: ModelyardError) -> int:
        """End every queued request with `error` (the model is going away)."""
        failed = list(self._waiting)
        for ticket in failed:
            self._remove(ticket)
            ticket.state = TicketState.DONE
            ticket.granted.set_exception(error)
        return len(failed)

    def _victims_for(self, ticket: Ticket) -> list[Ticket] | None:
        """Queued tickets to shed so `ticket` fits (empty: fits as is), or None: refuse it."""
        count, tokens = len(self._waiting) + 1, self._tokens + ticket.tokens
        victims: list[Ticket] = []
        # Lowest priority first, newest first within a level: the cheapest to disappoint.
        for candidate in sorted(self._waiting, key=lambda t: (t.priority, -t.seq)):
            if count <= self.max_requests and tokens <= self.max_tokens:
                break
            if candidate.priority >= ticket.priority:
                return None
            victims.append(candidate)
            count, tokens = count - 1, tokens - candidate.tokens
        if count > self.max_requests or tokens > self.max_tokens:
            return None
        return victims

    def _remove(self, ticket: Ticket) -> None:
        self._waiting.remove(ticket)
        self._tokens -= ticket.tokens
        self._counters.dequeued(ticket.tokens)

    def _dispatch(self) -> None:
        while self._waiting and self.running < self._slots:
            best = max(self._waiting, key=lambda t: (t.priority, -t.seq))
            self._remove(best)
            best.state = TicketState.RUNNING
            self.running += 1
            best.granted.set_result(None)

    def _exhausted(self, message: str) -> ResourceExhausted:
        return ResourceExhausted(
            message,
            reason="QUEUE_FULL",
            metadata={"model": self.key},
            retry_after_s=RETRY_AFTER_S,
        )
