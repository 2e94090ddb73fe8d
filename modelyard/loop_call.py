"""Reading event-loop state from another thread (Prometheus scrapes run on their own).

The services mutate their dicts on the event loop only; a collector thread iterating one
of them can die with "dictionary changed size during iteration" or see half an update.
`loop_caller` runs the read on the loop instead and hands the result to the thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def loop_caller(fn: Callable[[], T], timeout_s: float = 5.0) -> Callable[[], T]:
    """`fn`, callable from any thread: it runs on the loop running now (where its data
    changes) and other threads wait at most `timeout_s` for its result. Created outside a
    running loop, it is `fn` itself (nothing runs concurrently then)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return fn

    def call() -> T:
        try:
            if asyncio.get_running_loop() is loop:
                return fn()
        except RuntimeError:
            pass  # no loop in this thread: the usual case, a scrape thread
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn())
            except BaseException as err:  # handed to the waiting thread
                future.set_exception(err)

        loop.call_soon_threadsafe(run)
        return future.result(timeout_s)

    return call
