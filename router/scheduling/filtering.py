"""Running a profile's filters over a list of candidates, in order."""

from __future__ import annotations

from collections.abc import Sequence

from router.scheduling.types import Candidate, CycleState, Filter, Request


def apply_filters(
    filters: Sequence[Filter], req: Request, cands: Sequence[Candidate], cycle: CycleState
) -> Sequence[Candidate]:
    survivors = cands
    for f in filters:
        if not survivors:
            break
        survivors = f.filter(req, survivors, cycle)
    return survivors
