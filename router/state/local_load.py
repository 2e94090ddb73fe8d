"""What this router knows of its own traffic before any worker's pushed status says so."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from router.state.prefix_history import PrefixHistory
from router.state.session_targets import SessionTargets


@dataclass(slots=True)
class LocalLoad:
    # Open streams (and direct picks) per worker address: the pushed status lags behind.
    in_flight: Counter[str] = field(default_factory=Counter)
    # Uncached prompt tokens of those streams not yet at their first token, per worker.
    prefilling: Counter[str] = field(default_factory=Counter)
    # Where this router sent each prefix, for workers that publish no prefix summary.
    history: PrefixHistory = field(default_factory=PrefixHistory)
    # Each session's preferred workers, ranked once per pool.
    sessions: SessionTargets = field(default_factory=SessionTargets)
