"""RequestQueue: priority order, FIFO within a level, bounds, shedding, deadlines, slots."""

from __future__ import annotations

import asyncio
import time

import pytest

from modelyard.errors import DeadlineExceeded, ResourceExhausted
from modelyard.v1 import common_pb2
from worker.admission import RequestQueue, Ticket, TicketState
from worker.counters import SequenceCounters

LOW, NORMAL, HIGH, CRITICAL = (
    common_pb2.PRIORITY_LOW,
    common_pb2.PRIORITY_NORMAL,
    common_pb2.PRIORITY_HIGH,
    common_pb2.PRIORITY_CRITICAL,
)


def queue(max_requests: int = 10, max_tokens: int = 1000) -> RequestQueue:
    return RequestQueue("m@1", SequenceCounters(), max_requests=max_requests, max_tokens=max_tokens)


async def test_slots_go_to_the_highest_priority_then_first_come() -> None:
    q = queue()
    tickets = [
        q.submit(LOW, 1),
        q.submit(NORMAL, 1),
        q.submit(CRITICAL, 1),
        q.submit(NORMAL, 1),
        q.submit(HIGH, 1),
    ]
    order: list[Ticket] = []
    q.set_slots(1)
    for _ in tickets:
        running = next(t for t in tickets if t.state is TicketState.RUNNING)
        order.append(running)
        q.leave(running)
    assert order == [tickets[2], tickets[4], tickets[1], tickets[3], tickets[0]]


async def test_nothing_runs_until_the_model_has_slots() -> None:
    q = queue()
    t = q.submit(NORMAL, 5)
    assert t.state is TicketState.WAITING and q.waiting_tokens == 5
    q.set_slots(2)
    assert t.state.value == "running" and q.waiting == 0 and q.running == 1
    q.leave(t)
    assert q.running == 0


async def test_a_full_queue_refuses_at_once_by_count_and_by_tokens() -> None:
    q = queue(max_requests=2, max_tokens=100)
    q.submit(NORMAL, 10)
    q.submit(NORMAL, 10)
    with pytest.raises(ResourceExhausted) as err:
        q.submit(NORMAL, 10)
    assert err.value.reason == "QUEUE_FULL" and err.value.retry_after_s
    q2 = queue(max_requests=10, max_tokens=100)
    q2.submit(NORMAL, 60)
    with pytest.raises(ResourceExhausted):
        q2.submit(NORMAL, 50)
    with pytest.raises(ResourceExhausted, match="at most 100"):
        q2.submit(CRITICAL, 101)


async def test_a_higher_priority_request_sheds_the_newest_lowest_one() -> None:
    counters = SequenceCounters()
    q = RequestQueue("m@1", counters, max_requests=3, max_tokens=1000)
    old_low, new_low, normal = q.submit(LOW, 1), q.submit(LOW, 1), q.submit(NORMAL, 1)
    high = q.submit(HIGH, 1)
    assert new_low.granted.done()
    with pytest.raises(ResourceExhausted, match="shed"):
        await q.wait(new_low, None)
    assert [t.state for t in (old_low, normal, high)] == [TicketState.WAITING] * 3
    assert q.shed_total == 1
    # Equal priority never sheds: the newcomer is refused.
    with pytest.raises(ResourceExhausted):
        q.submit(LOW, 1)
    assert counters.snapshot().queued_requests == 3


async def test_shedding_frees_enough_tokens_or_refuses_without_shedding() -> None:
    q = queue(max_requests=10, max_tokens=100)
    low = q.submit(LOW, 40)
    q.submit(HIGH, 50)
    with pytest.raises(ResourceExhausted):
        q.submit(HIGH, 60)  # shedding the LOW one would not make room: nobody is shed
    assert low.state is TicketState.WAITING
    q.submit(CRITICAL, 45)
    assert low.state.value == "done"


async def test_a_deadline_in_the_queue_is_deadline_exceeded_and_frees_the_place() -> None:
    counters = SequenceCounters()
    q = RequestQueue("m@1", counters, max_requests=4, max_tokens=100)
    t = q.submit(NORMAL, 7)
    with pytest.raises(DeadlineExceeded, match="queue"):
        await q.wait(t, time.monotonic() + 0.05)
    assert q.waiting == 0 and q.waiting_tokens == 0
    assert counters.snapshot().queued_tokens == 0


async def test_cancelling_a_waiter_frees_its_place_and_a_runner_frees_its_slot() -> None:
    q = queue()
    q.set_slots(1)
    first = q.submit(NORMAL, 1)
    second = q.submit(NORMAL, 1)
    waiter = asyncio.ensure_future(q.wait(second, None))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert q.waiting == 0
    third = q.submit(NORMAL, 1)
    q.leave(first)
    assert third.state is TicketState.RUNNING
