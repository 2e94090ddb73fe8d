"""Shared helper: the candidates after the chosen one, best score first."""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter

from router.scheduling.types import Candidate


def chosen_then_rest(
    chosen: Candidate, scored: Sequence[tuple[Candidate, float]]
) -> list[Candidate]:
    # Stable, and reverse keeps ties in their given order as the negated key did.
    rest = sorted(scored, key=itemgetter(1), reverse=True)
    return [chosen, *(c for c, _ in rest if c is not chosen)]
