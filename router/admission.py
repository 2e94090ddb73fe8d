"""How many generations a router runs at once, in all and per API key.

Beyond either bound a new request is RESOURCE_EXHAUSTED at once, with a retry hint,
instead of queueing behind the others: under overload the admitted requests keep their
latency and the rest learn immediately to back off (or go to another router replica).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from modelyard.errors import ResourceExhausted

RETRY_AFTER_S = 1.0


class RouterAdmission:
    def __init__(self, max_in_flight: int, max_in_flight_per_key: int = 0) -> None:
        self.max_in_flight = max_in_flight
        self.max_per_key = max_in_flight_per_key  # 0: only the router-wide bound
        self.in_flight = 0
        self._per_key: Counter[str] = Counter()  # only keys with requests in flight

    @contextmanager
    def admit(self, key: str = "") -> Iterator[None]:
        """Hold one slot (and one of `key`'s) for the body; refuse at once when full."""
        self.acquire(key)
        try:
            yield
        finally:
            self.release(key)

    def acquire(self, key: str = "") -> None:
        """Take one slot (and one of `key`'s) until `release`: a direct stream's pick holds
        its slot until the worker reports the outcome."""
        if self.in_flight >= self.max_in_flight:
            raise ResourceExhausted(
                f"this router is running {self.in_flight} generations, its limit "
                "(MODELYARD_ROUTER_MAX_IN_FLIGHT); retry shortly or through another replica",
                reason="ROUTER_OVERLOADED",
                retry_after_s=RETRY_AFTER_S,
            )
        if key and self.max_per_key and self._per_key[key] >= self.max_per_key:
            raise ResourceExhausted(
                f"key {key!r} has {self._per_key[key]} generations in flight, its limit "
                "(MODELYARD_ROUTER_MAX_IN_FLIGHT_PER_KEY); retry when one finishes",
                reason="KEY_OVERLOADED",
                retry_after_s=RETRY_AFTER_S,
            )
        self.in_flight += 1
        if key:
            self._per_key[key] += 1

    def release(self, key: str = "") -> None:
        self.in_flight -= 1
        if key:
            self._per_key[key] -= 1
            if not self._per_key[key]:
                del self._per_key[key]
