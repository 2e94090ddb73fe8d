"""The decode thread -> event loop channel: order, credits, and one loop wake per batch of
events rather than per event (a paced consumer takes the tokens decoded meanwhile
without a wake each)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from worker.engines.base import EngineEvent, Finished, FinishReason, Piece
from worker.engines.channel import DecodeFailed, EventChannel, engine_events

Channel = EventChannel[EngineEvent | DecodeFailed]


def count_wakes(loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times anything woke `loop` from another thread."""
    calls = [0]
    original = loop.call_soon_threadsafe

    def counted(callback: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counted)
    return calls


def piece(i: int) -> Piece:
    return Piece(f"t{i} ", (i,))


async def test_events_put_while_the_consumer_is_busy_wake_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    wakes = count_wakes(loop, monkeypatch)
    channel: EventChannel[int] = EventChannel(loop, capacity=64)
    producer = threading.Thread(target=lambda: [channel.put(i) for i in range(20)])
    producer.start()
    producer.join()  # the consumer never parked: nothing to wake
    assert wakes[0] == 0 and channel.ready() == 20
    assert [await channel.get() for _ in range(20)] == list(range(20))


async def test_a_parked_consumer_is_woken_by_each_event(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    wakes = count_wakes(loop, monkeypatch)
    channel: EventChannel[int] = EventChannel(loop)
    got = []
    for i in range(5):
        waiting = asyncio.ensure_future(channel.get())
        await asyncio.sleep(0)  # parked
        # A thread of its own (to_thread would wake the loop to hand back its result).
        producer = threading.Thread(target=channel.put, args=(i,))
        producer.start()
        producer.join()
        got.append(await asyncio.wait_for(waiting, 5))
    assert got == list(range(5)) and wakes[0] == 5


async def test_a_consumer_cancelled_while_parked_loses_nothing() -> None:
    channel: EventChannel[int] = EventChannel(asyncio.get_running_loop())
    waiting = asyncio.ensure_future(channel.get())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.sleep(0)
    await asyncio.to_thread(channel.put, 7)  # wakes a future nobody waits on: harmless
    assert await asyncio.wait_for(channel.get(), 5) == 7


async def test_credits_stop_the_producer_and_closing_releases_it() -> None:
    channel: EventChannel[int] = EventChannel(asyncio.get_running_loop(), capacity=2)
    results: list[bool] = []

    def produce() -> None:
        for i in range(3):
            results.append(channel.put(i))

    producer = threading.Thread(target=produce)
    producer.start()
    await asyncio.sleep(0.3)
    assert results == [True, True] and channel.ready() == 2  # the third waits for a credit
    assert await channel.get() == 0  # a credit back: the third goes in
    await asyncio.to_thread(producer.join, 5)
    assert results == [True, True, True]
    full: list[bool] = []
    blocked = threading.Thread(target=lambda: full.append(channel.put(9)))
    blocked.start()
    await asyncio.sleep(0.1)
    channel.close()
    await asyncio.to_thread(blocked.join, 5)
    assert full == [False]


async def test_a_paced_stream_sends_the_first_token_at_once_then_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    interval_s, tokens, gap_s = 0.1, 40, 0.005
    channel: Channel = EventChannel(loop, capacity=tokens + 2)
    first_seen = threading.Event()

    def decode() -> None:
        channel.put(piece(0))
        # The first token reaches the consumer before any other is decoded.
        assert first_seen.wait(5)
        for i in range(1, tokens):
            time.sleep(gap_s)
            channel.put(piece(i))
        channel.put(Finished(FinishReason.LENGTH, 3, tokens))

    wakes = count_wakes(loop, monkeypatch)
    producer = threading.Thread(target=decode)
    started = time.monotonic()
    producer.start()
    events: list[EngineEvent] = []
    async with asyncio.timeout(30):
        async for event in engine_events(channel, "test", interval_s):
            events.append(event)
            first_seen.set()
    elapsed = time.monotonic() - started
    await asyncio.to_thread(producer.join, 5)
    assert [e.token_ids for e in events[:-1] if isinstance(e, Piece)] == [
        (i,) for i in range(tokens)
    ]
    assert isinstance(events[-1], Finished)
    # One wake for the first token, then at most one per interval (plus the one that
    # finds the stream's end): without pacing, one per token (40).
    assert wakes[0] <= 3 + elapsed / interval_s < tokens / 2


async def test_unpaced_every_token_is_taken_as_it_comes() -> None:
    channel: Channel = EventChannel(asyncio.get_running_loop())
    seen = threading.Event()

    def decode() -> None:
        for i in range(3):
            seen.clear()
            channel.put(piece(i))
            assert seen.wait(5)  # the consumer had it before the next was decoded
        channel.put(Finished(FinishReason.LENGTH, 1, 3))

    producer = threading.Thread(target=decode)
    producer.start()
    got = []
    async with asyncio.timeout(30):
        async for event in engine_events(channel, "test"):
            got.append(event)
            seen.set()
    await asyncio.to_thread(producer.join, 5)
    assert len(got) == 4


async def test_a_pause_never_holds_back_the_end_of_the_stream() -> None:
    interval_s = 0.5
    channel: Channel = EventChannel(asyncio.get_running_loop())
    first_seen = threading.Event()
    ended_at: list[float] = []

    def decode() -> None:
        channel.put(piece(0))
        assert first_seen.wait(5)
        channel.put(piece(1))  # waits out the pause
        time.sleep(0.05)
        ended_at.append(time.monotonic())
        channel.put(Finished(FinishReason.STOP, 1, 2))  # ends it

    producer = threading.Thread(target=decode)
    producer.start()
    got: list[tuple[EngineEvent, float]] = []
    async with asyncio.timeout(30):
        async for event in engine_events(channel, "test", interval_s):
            got.append((event, time.monotonic()))
            first_seen.set()
    await asyncio.to_thread(producer.join, 5)
    assert [type(e) for e, _ in got] == [Piece, Piece, Finished]
    # Held until the end came (~0.05 s), not for the rest of the 0.5 s interval.
    assert got[1][1] - ended_at[0] < interval_s / 2
    assert got[2][1] - ended_at[0] < interval_s / 2
