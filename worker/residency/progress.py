"""What a load is doing now, published to status watchers without flooding them.

A load goes through phases (`LoadPhase`); a download reports bytes many times a
second. Phase changes are published at once; byte counts at most `rate_hz` times a
second, the last one always (a trailing update), so a watcher sees the final count.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass

from worker.counters import ChangeNotifier

DEFAULT_RATE_HZ = 10.0


class LoadPhase(enum.Enum):
    NONE = ""
    FETCH = "fetch"  # looking the artifact up in the cache (and checking it)
    DOWNLOAD = "download"
    VERIFY = "verify"  # sha256 of a local file
    LOAD = "load"  # the engine reads the weights
    WARM_UP = "warm_up"


@dataclass
class LoadProgress:
    phase: LoadPhase = LoadPhase.NONE
    bytes_done: int = 0
    bytes_total: int = 0  # 0: unknown, or nothing to download


class ProgressPublisher:
    """Updates one model's `LoadProgress` and notifies watchers, throttled. Event loop only."""

    def __init__(
        self, progress: LoadProgress, notifier: ChangeNotifier, rate_hz: float = DEFAULT_RATE_HZ
    ) -> None:
        self.progress = progress
        self._notifier = notifier
        self._interval = 1.0 / rate_hz
        self._last = 0.0
        self._pending: asyncio.TimerHandle | None = None

    def phase(self, phase: LoadPhase) -> None:
        if phase is self.progress.phase:
            return
        self.progress.phase = phase
        self._publish()

    def bytes(self, done: int, total: int | None) -> None:
        """The store's progress callback: `total` None while unknown."""
        self.progress.phase = LoadPhase.DOWNLOAD
        self.progress.bytes_done = done
        self.progress.bytes_total = total or 0
        wait = self._last + self._interval - time.monotonic()
        if wait <= 0:
            self._publish()
        elif self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(wait, self._publish)

    def finish(self) -> None:
        """The load ended (warm or failed): clear the progress and any pending update."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self.progress.phase = LoadPhase.NONE
        self.progress.bytes_done = self.progress.bytes_total = 0

    def _publish(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self._last = time.monotonic()
        self._notifier.notify()
