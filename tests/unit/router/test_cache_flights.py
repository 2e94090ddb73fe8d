"""Single flight of identical misses (router/cache/flight.py): what a waiter gets when its
leader shares an answer, shares nothing, or takes longer than the waiter may wait."""

from __future__ import annotations

import asyncio

from modelyard.v1 import common_pb2
from router.cache.entry import Entry
from router.cache.flight import Flights


def entry() -> Entry:
    return Entry(
        deltas=(common_pb2.TokenDelta(text="hi", token_ids=[1]),),
        finished=common_pb2.GenerationFinished(finish_reason=common_pb2.FINISH_REASON_STOP),
    )


async def test_a_waiter_replays_what_its_leader_shares() -> None:
    flights = Flights()
    assert await flights.join("k", None) == (True, None)
    waiter = asyncio.create_task(flights.join("k", None))
    await asyncio.sleep(0)  # the waiter reaches the flight
    answer = entry()
    flights.land("k", answer)
    assert await waiter == (False, answer)
    assert len(flights) == 0


async def test_a_leader_with_nothing_to_share_hands_the_lead_to_one_waiter() -> None:
    flights = Flights()
    assert (await flights.join("k", None))[0]
    waiters = [asyncio.create_task(flights.join("k", None)) for _ in range(3)]
    await asyncio.sleep(0)
    flights.land("k", None)  # the leader failed
    results = await asyncio.gather(*waiters)
    assert sorted(leads for leads, _ in results) == [False, False, True]
    assert all(e is None for _, e in results)


async def test_a_waiter_stops_waiting_at_its_deadline_and_flights_are_bounded() -> None:
    flights = Flights(max_flights=1)
    assert (await flights.join("k", None))[0]
    assert await flights.join("k", 0.01) == (False, None)  # never landed: on its own
    assert await flights.join("other", None) == (False, None)  # full: no sharing, no lead
