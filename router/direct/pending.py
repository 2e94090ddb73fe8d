"""Direct streams this router picked a worker for and has not heard the end of.

Each pick holds what a proxied request holds while it streams: one admission slot (the
router's and its API key's) and one in-flight count on its worker, so scheduling and
per-key limits see direct traffic. They are let go when the worker reports the outcome,
when the same client asks again for the same request (a retry before the first token)
or when the pick's hold runs out (the request's deadline, and a grace for the report).

Memory is bounded: every pick holds an admission slot, so there are never more than
MODELYARD_ROUTER_MAX_IN_FLIGHT of them; a heap of hold ends (rebuilt when picks taken
early leave it mostly stale) makes a sweep look only at the picks that are over.
Sweeps run on every pick and report.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from modelyard.prefix import PrefixChain
from modelyard.v1 import model_pb2
from router.admission import RouterAdmission


@dataclass(frozen=True)
class Pick:
    """One pick, as the router decided it: what the outcome is accounted under."""

    nonce: str  # the ticket's: the key of the pick, and what a report redeems
    ticket: str  # as issued: a report carrying exactly it needs no signature check
    request_id: str
    worker: str  # address
    model: model_pb2.Model
    route: str
    arm: str
    attempt: int
    client: str  # the API key's name (or identity) for stats
    key: str  # the admission key
    chat: bool
    prefix: PrefixChain  # the request's, for the prefix history
    prefix_precise: bool  # the worker publishes what it holds: no history needed
    route_ms: float  # the router's time to pick
    hold_until: float  # monotonic


class PendingPicks:
    def __init__(
        self, admission: RouterAdmission, in_flight: Counter[str], clock: Callable[[], float]
    ) -> None:
        self._admission = admission
        self._in_flight = in_flight
        self._clock = clock
        self._picks: dict[str, Pick] = {}
        self._ends: list[tuple[float, str]] = []  # (hold_until, nonce), a heap
        self._by_request: dict[tuple[str, str], str] = {}  # (key, request id) -> nonce

    def __len__(self) -> int:
        return len(self._picks)

    def hold(self, key: str) -> None:
        """Take the admission slot a pick will hold; raises RESOURCE_EXHAUSTED when full."""
        self.sweep()
        self._admission.acquire(key)

    def unhold(self, key: str) -> None:
        """Give back a slot taken by `hold` for a pick that was never added."""
        self._admission.release(key)

    def add(self, pick: Pick) -> None:
        """Record a pick whose slot `hold` took; it counts on its worker from now on."""
        self._picks[pick.nonce] = pick
        self._by_request[(pick.key, pick.request_id)] = pick.nonce
        self._in_flight[pick.worker] += 1
        heapq.heappush(self._ends, (pick.hold_until, pick.nonce))
        if len(self._ends) > 2 * len(self._picks) + 64:  # mostly picks reported already
            self._ends = [(p.hold_until, p.nonce) for p in self._picks.values()]
            heapq.heapify(self._ends)

    def get(self, nonce: str) -> Pick | None:
        return self._picks.get(nonce)

    def take(self, nonce: str) -> Pick | None:
        """The pick of a ticket, let go (once: a second take finds nothing)."""
        pick = self._picks.pop(nonce, None)
        if pick is not None:
            self._release(pick)
        return pick

    def forget_request(self, key: str, request_id: str) -> None:
        """A client asks again for a request (its worker failed before the first token):
        the earlier pick ends here, not when its hold runs out."""
        nonce = self._by_request.get((key, request_id))
        if nonce is not None:
            self.take(nonce)

    def sweep(self) -> None:
        """Let go of picks whose hold ran out (no report came)."""
        now = self._clock()
        while self._ends and self._ends[0][0] <= now:
            self.take(heapq.heappop(self._ends)[1])

    def _release(self, pick: Pick) -> None:
        if self._by_request.get((pick.key, pick.request_id)) == pick.nonce:
            del self._by_request[(pick.key, pick.request_id)]
        self._admission.release(pick.key)
        self._in_flight[pick.worker] -= 1
        if self._in_flight[pick.worker] <= 0:
            del self._in_flight[pick.worker]
