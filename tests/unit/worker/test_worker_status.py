"""Status counters and the change notifier WatchStatus waits on."""

from __future__ import annotations

import asyncio
import threading
import time

from worker.counters import ChangeNotifier, SequenceCounters


def test_counters_track_queue_running_and_tokens() -> None:
    counters = SequenceCounters()
    counters.enqueued(100)
    counters.enqueued(20)
    counters.dequeued(100)
    counters.started()
    counters.generated(7)
    snap = counters.snapshot()
    assert (snap.queued_requests, snap.queued_tokens, snap.running_sequences) == (1, 20, 1)
    assert snap.generated_tokens_total == 7
    assert snap.tokens_per_second > 0
    counters.finished()
    assert counters.snapshot().running_sequences == 0


async def test_a_waiter_wakes_on_a_change_from_another_thread() -> None:
    notifier = ChangeNotifier()
    counters = SequenceCounters(notifier)
    since = notifier.version
    waiting = asyncio.ensure_future(notifier.wait(since, 5))
    await asyncio.sleep(0.01)
    started = time.monotonic()
    threading.Thread(target=counters.started).start()
    assert await waiting > since
    assert time.monotonic() - started < 1


async def test_a_waiter_returns_after_the_heartbeat_without_changes() -> None:
    notifier = ChangeNotifier()
    started = time.monotonic()
    assert await notifier.wait(notifier.version, 0.05) == notifier.version
    assert time.monotonic() - started >= 0.04


async def test_a_change_before_waiting_returns_at_once() -> None:
    notifier = ChangeNotifier()
    since = notifier.version
    notifier.notify()
    assert await asyncio.wait_for(notifier.wait(since, 5), 1) == since + 1


def test_tokens_are_not_status_changes() -> None:
    notifier = ChangeNotifier()
    SequenceCounters(notifier).generated(5)
    assert notifier.version == 0


async def test_closing_wakes_waiters_for_good() -> None:
    notifier = ChangeNotifier()
    waiting = asyncio.ensure_future(notifier.wait(notifier.version, 5))
    await asyncio.sleep(0.01)
    notifier.close()
    await asyncio.wait_for(waiting, 1)
    version = notifier.version
    assert await asyncio.wait_for(notifier.wait(version, 5), 1) == version
