"""Send a request where its prefix already is (that worker skips its prefill), unless
that worker's queue costs more than the prefill it saves.

A candidate scores the share of the request's prefix (modelyard/prefix.py chain) its
worker holds for the model, from the worker's pushed summary or, for a worker that
publishes none, this router's routing history; scaled down by the extra queue wait it
costs over the least loaded candidate, measured against the prefill the prefix saves,
and 0 once that wait eats the whole saving (predict.prefix_gains). So with equal load
the holder wins, and a long queue on it sends the request elsewhere instead of piling
a popular prefix onto one worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from router.scheduling.predict import PrefixGain, prefix_gains
from router.scheduling.types import Candidate, CycleState, Request


@dataclass(frozen=True)
class PrefixScorer:
    name: str = "prefix"

    def score(
        self, req: Request, cands: Sequence[Candidate], cycle: CycleState
    ) -> dict[Candidate, float]:
        if not req.prefix.hashes:
            return {c: 0.0 for c in cands}
        gains = prefix_gains(req, cands, cycle)
        return {c: _score(gains[c]) for c in cands}


def _score(gain: PrefixGain) -> float:
    return gain.share * gain.net_ms / gain.saved_ms if gain.saved_ms > 0 else 0.0
