"""Scrape threads read event-loop state on the loop, never beside it."""

from __future__ import annotations

import asyncio
import threading

import pytest

from modelyard.loop_call import loop_caller


async def test_a_read_from_another_thread_runs_on_the_loop() -> None:
    loop_thread = threading.get_ident()
    state: dict[int, int] = {}
    ran_on: list[int] = []

    def snapshot() -> dict[int, int]:
        ran_on.append(threading.get_ident())
        return dict(state)  # iterating here is safe only on the loop's thread

    read = loop_caller(snapshot)
    stop = False

    async def mutate() -> None:
        i = 0
        while not stop:
            state[i] = i
            state.pop(i - 50, None)
            i += 1
            await asyncio.sleep(0)

    writer = asyncio.create_task(mutate())
    seen = await asyncio.to_thread(lambda: [len(read()) for _ in range(200)])
    stop = True
    await writer
    assert len(seen) == 200 and all(n <= 51 for n in seen)
    assert set(ran_on) == {loop_thread}
    assert read() == state  # on the loop itself it is a plain call


async def test_errors_reach_the_calling_thread() -> None:
    def broken() -> int:
        raise ValueError("no")

    read = loop_caller(broken)
    with pytest.raises(ValueError):
        await asyncio.to_thread(read)


def test_outside_a_loop_it_is_the_function_itself() -> None:
    def fn() -> int:
        return 7

    assert loop_caller(fn) is fn
