"""A circuit breaker per worker: it opens on consecutive failures or a high error rate
over recent calls, stays open for a cool-down, then lets a few probes decide."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from modelyard.v1 import router_pb2

log = logging.getLogger(__name__)

State: TypeAlias = router_pb2.BreakerState.ValueType
CLOSED = router_pb2.BREAKER_STATE_CLOSED
OPEN = router_pb2.BREAKER_STATE_OPEN
HALF_OPEN = router_pb2.BREAKER_STATE_HALF_OPEN
_CLOSED_ALLOWS: tuple[State, bool] = (CLOSED, True)  # a worker that never failed


@dataclass(frozen=True)
class BreakerPolicy:
    consecutive_failures: int = 5
    # Error rate over the last `window` outcomes, counted once `min_calls` are in.
    error_rate: float = 0.5
    window: int = 20
    min_calls: int = 10
    open_s: float = 5.0
    half_open_probes: int = 1


class Breaker:
    def __init__(self, policy: BreakerPolicy, clock: Callable[[], float]) -> None:
        self._policy = policy
        self._clock = clock
        self._state: State = CLOSED
        self._opened_at = 0.0
        self._consecutive = 0
        self._recent: deque[bool] = deque(maxlen=policy.window)  # True: failure
        self._probes = 0

    @property
    def state(self) -> State:
        if self._state == OPEN and self._clock() - self._opened_at >= self._policy.open_s:
            self._state = HALF_OPEN
            self._probes = 0
        return self._state

    def allows(self) -> bool:
        """Whether a request may go to this worker now (no side effect)."""
        state = self.state
        return state == CLOSED or (
            state == HALF_OPEN and self._probes < self._policy.half_open_probes
        )

    def on_attempt(self) -> None:
        """A request is being sent: in half-open it takes a probe slot."""
        if self.state == HALF_OPEN:
            self._probes += 1

    def on_success(self) -> None:
        self._consecutive = 0
        self._recent.append(False)
        if self.state != CLOSED:
            self._state = CLOSED
            self._recent.clear()

    def on_failure(self) -> None:
        self._consecutive += 1
        self._recent.append(True)
        state = self.state
        if state == HALF_OPEN or self._tripped():
            self._state = OPEN
            self._opened_at = self._clock()

    def eject(self) -> None:
        """Open at once, whatever the counts: the worker went silent (frozen, not failing)."""
        self._consecutive += 1
        self._recent.append(True)
        self._state = OPEN
        self._opened_at = self._clock()

    def _tripped(self) -> bool:
        p = self._policy
        if self._consecutive >= p.consecutive_failures:
            return True
        n = len(self._recent)
        return n >= p.min_calls and sum(self._recent) / n >= p.error_rate


class BreakerBoard:
    """One breaker per worker key; `on_change(worker, state)` hears every transition."""

    def __init__(
        self,
        policy: BreakerPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, State], None] | None = None,
    ) -> None:
        self._policy = policy or BreakerPolicy()
        self._clock = clock
        self._on_change = on_change
        self._breakers: dict[str, Breaker] = {}

    def _get(self, worker: str) -> Breaker:
        breaker = self._breakers.get(worker)
        if breaker is None:
            breaker = self._breakers[worker] = Breaker(self._policy, self._clock)
        return breaker

    def state(self, worker: str) -> State:
        breaker = self._breakers.get(worker)
        return CLOSED if breaker is None else self._observe(worker, breaker, breaker.state)

    def allows(self, worker: str) -> bool:
        breaker = self._breakers.get(worker)
        return breaker is None or breaker.allows()

    def verdict(self, worker: str) -> tuple[State, bool]:
        """state() and allows() in one lookup (the scheduler asks both per candidate)."""
        breaker = self._breakers.get(worker)
        if breaker is None:
            return _CLOSED_ALLOWS
        return self._observe(worker, breaker, breaker.state), breaker.allows()

    def on_attempt(self, worker: str) -> None:
        self._get(worker).on_attempt()

    def on_success(self, worker: str) -> None:
        self._record(worker, Breaker.on_success)

    def on_failure(self, worker: str) -> None:
        self._record(worker, Breaker.on_failure)

    def eject(self, worker: str) -> None:
        """Take a silent worker out of scheduling for the open period (then probes)."""
        self._record(worker, Breaker.eject)

    def forget(self, worker: str) -> None:
        """Drop a worker that left the pool (bounded memory under churn)."""
        self._breakers.pop(worker, None)

    def _record(self, worker: str, outcome: Callable[[Breaker], None]) -> None:
        breaker = self._get(worker)
        before = breaker.state
        outcome(breaker)
        self._observe(worker, breaker, before)

    def _observe(self, worker: str, breaker: Breaker, before: State) -> State:
        after = breaker.state
        if after != before:
            log.warning(
                "breaker of worker %s: %s -> %s",
                worker,
                router_pb2.BreakerState.Name(before),
                router_pb2.BreakerState.Name(after),
            )
        if self._on_change is not None:
            self._on_change(worker, after)
        return after
