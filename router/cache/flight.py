"""Concurrent identical misses share one worker call (single flight).

The first request for a key that is not cached leads: a worker serves it and, if its
answer is stored, the requests that asked for the same key meanwhile replay that answer
instead of sending the same prompt to a worker again. When the leader ends without an
answer to share (it failed, fell back to another model, or was too large to keep), each
waiter goes on as a miss of its own, the first of them leading anew.
"""

from __future__ import annotations

import asyncio

from router.cache.entry import Entry

MAX_FLIGHTS = 10_000  # keys led at once; beyond, misses go to workers without sharing


class Flights:
    def __init__(self, max_flights: int = MAX_FLIGHTS) -> None:
        self._max = max_flights
        self._leaders: dict[str, asyncio.Future[Entry | None]] = {}

    def __len__(self) -> int:
        return len(self._leaders)

    async def join(self, key: str, wait_s: float | None) -> tuple[bool, Entry | None]:
        """(leads, entry): lead the key's flight, or the entry its leader shared. A waiter
        waits at most `wait_s` (what is left of its deadline), then goes on as a miss."""
        flight = self._leaders.get(key)
        if flight is not None:
            try:
                async with asyncio.timeout(wait_s):
                    # Shielded: one waiter's cancellation must not cancel the others' wait.
                    entry = await asyncio.shield(flight)
            except TimeoutError:
                return False, None
            if entry is not None:
                return False, entry
        return self._lead(key), None

    def land(self, key: str, entry: Entry | None) -> None:
        """The leader of `key` is done: share `entry` (None: nothing to share)."""
        flight = self._leaders.pop(key, None)
        if flight is not None and not flight.done():
            flight.set_result(entry)

    def _lead(self, key: str) -> bool:
        if key in self._leaders or len(self._leaders) >= self._max:
            return False
        self._leaders[key] = asyncio.get_running_loop().create_future()
        return True
