"""One scheduling cycle: filters (over a bounded sample of a large pool), then weighted
scorers, then the profile's picker."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from router.scheduling.filtering import apply_filters
from router.scheduling.sample import BoundedSample
from router.scheduling.sequence_pool import SequencePool
from router.scheduling.types import (
    Candidate,
    CandidatePool,
    CycleState,
    Filter,
    Picker,
    Request,
    Scorer,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Profile:
    """One objective's plugins and weights."""

    name: str
    filters: Sequence[Filter]
    scorers: Sequence[tuple[Scorer, float]]
    picker: Picker
    # None: every candidate is filtered and scored, whatever the pool's size.
    sample: BoundedSample | None = None


@dataclass(frozen=True)
class Decision:
    """Candidates in the order to try them, and why the others were dropped."""

    ordered: list[Candidate]
    cycle: CycleState


def run_cycle(
    profile: Profile, req: Request, cands: Sequence[Candidate] | CandidatePool
) -> Decision:
    cycle = CycleState()
    pool = SequencePool(cands) if isinstance(cands, Sequence) else cands
    sample = profile.sample
    survivors: Sequence[Candidate]
    if sample is None or len(pool) <= sample.size:
        survivors = apply_filters(profile.filters, req, list(pool.all()), cycle)
    else:
        survivors = sample.survivors(req, pool, profile.filters, cycle)
    if not survivors:
        return Decision([], cycle)
    scored = _weighted(profile.scorers, req, survivors, cycle)
    ordered = profile.picker.pick(req, scored, cycle)
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "%s %s: %s",
            profile.name,
            req.request_id,
            ", ".join(f"{c.worker_id or c.worker}/{c.model_key}={s:.3f}" for c, s in scored),
        )
    return Decision(ordered, cycle)


def _weighted(
    scorers: Sequence[tuple[Scorer, float]],
    req: Request,
    survivors: Sequence[Candidate],
    cycle: CycleState,
) -> list[tuple[Candidate, float]]:
    """Each survivor's weighted mean score, scorers of weight 0 not run."""
    total = [0.0] * len(survivors)
    weight_sum = sum(w for _, w in scorers) or 1.0
    for scorer, weight in scorers:
        if weight <= 0:
            continue
        scores = scorer.score(req, survivors, cycle)
        for i, c in enumerate(survivors):
            s = scores.get(c, 0.0)
            # Clamp: a misbehaving scorer must not outweigh its weight (NaN counts 0).
            if not 0.0 <= s <= 1.0:
                s = 1.0 if s > 1.0 else 0.0
            total[i] += weight * s
    return [(c, t / weight_sum) for c, t in zip(survivors, total, strict=True)]
