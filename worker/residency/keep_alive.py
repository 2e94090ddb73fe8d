"""Keep-alive timers: unload a model idle for its keep-alive (0: never)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from worker.residency.state import Resident


class KeepAlive:
    """Arms one timer per idle, evictable model; `expired(resident)` runs on the loop."""

    def __init__(self, default_s: float, expired: Callable[[Resident], None]) -> None:
        self._default_s = default_s
        self._expired = expired

    def of(self, r: Resident) -> float:
        return r.keep_alive_s if r.keep_alive_s is not None else self._default_s

    def arm(self, r: Resident) -> None:
        self.cancel(r)
        keep = self.of(r)
        if keep > 0 and r.evictable:
            r.idle_timer = asyncio.get_running_loop().call_later(keep, self._fire, r)

    @staticmethod
    def cancel(r: Resident) -> None:
        if r.idle_timer is not None:
            r.idle_timer.cancel()
            r.idle_timer = None

    def _fire(self, r: Resident) -> None:
        r.idle_timer = None
        self._expired(r)
