"""Drop (worker, model) pairs the worker cannot serve: the model failed to load there, or
it is cold and larger than the worker's whole memory budget (the worker may evict idle
models, so the budget, not the free part, is the limit).

A draining model stays a candidate, as a cold one: the router always asks for a load if
cold, and the worker then waits for the unload (its keep-alive ran out, or it was evicted
or unloaded a moment ago) and loads it again. Dropping it made a model whose keep-alive
expired answer 503 to the requests that arrived while it drained."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from modelyard.v1 import worker_pb2
from router.scheduling.types import Candidate, CycleState, Request

_UNSERVABLE = {worker_pb2.RESIDENCY_STATE_FAILED: "model failed to load"}


def unservable_reason(cand: Candidate) -> str | None:
    why = _UNSERVABLE.get(cand.residency)
    if why is not None:
        return why
    budget = cand.memory_budget_bytes
    if budget and cand.needs_load:
        need = cand.model.resources.memory_bytes
        if need > budget:
            return f"needs {need} bytes, budget {budget}"
    return None


@dataclass(frozen=True)
class ResidencyFilter:
    name: str = "residency"

    def filter(
        self, req: Request, cands: Sequence[Candidate], cycle: CycleState
    ) -> Sequence[Candidate]:
        kept: list[Candidate] = []
        for c in cands:
            # Most candidates fit plainly: the reason is built only for the rest.
            if c.residency not in _UNSERVABLE and not (c.memory_budget_bytes and c.needs_load):
                kept.append(c)
                continue
            why = unservable_reason(c)
            if why is None:
                kept.append(c)
            else:
                cycle.reject(self.name, c, why)
        return kept
