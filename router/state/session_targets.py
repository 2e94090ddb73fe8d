"""The workers each session prefers (rendezvous ranking over the whole pool), remembered
per session until the pool changes: ranking costs a hash per worker, and a session's
requests repeat."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from router.scheduling.scorers.affinity import rendezvous_ranked

MAX_SESSIONS = 16_384


class SessionTargets:
    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self._max = max_sessions
        # The pool list the rankings were made over: the pool replaces its list on every
        # change, so identity says whether they still hold.
        self._over: object = None
        self._ranked: OrderedDict[tuple[str, int], list[str]] = OrderedDict()

    def top(self, session_key: str, workers: Iterable[str], count: int, pool: object) -> list[str]:
        """The `count` workers `session_key` ranks first among `workers` (the addresses of
        the pool list `pool`)."""
        if pool is not self._over:
            self._ranked.clear()
            self._over = pool
        key = (session_key, count)
        ranked = self._ranked.get(key)
        if ranked is None:
            ranked = self._ranked[key] = rendezvous_ranked(session_key, workers, count)
            if len(self._ranked) > self._max:
                self._ranked.popitem(last=False)
        else:
            self._ranked.move_to_end(key)
        return ranked
