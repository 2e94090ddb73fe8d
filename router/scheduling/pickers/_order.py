"""Shared helper: the candidates after the chosen one, best score first."""

from __future__ import annotations

from collections.abc import Sequence

from router.scheduling.types import Candidate


def chosen_then_rest(
    chosen: Candidate, scored: Sequence[tuple[Candidate, float]]
) -> list[Candidate]:
    rest = sorted((p for p in scored if p[0] is not chosen), key=lambda p: -p[1])
    return [chosen, *(c for c, _ in rest)]
