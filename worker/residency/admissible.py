"""Whether a request may go ahead given its model's residency state: a check that reads
the state and counts refusals, and changes nothing (`ModelManager.acquire` calls it)."""

from __future__ import annotations

import asyncio
import collections

from modelyard.errors import FailedPrecondition, Unavailable
from modelyard.refs import ModelKey
from worker.admission import within
from worker.residency.backoff import backoff_refusal
from worker.residency.state import ResidencyState, Resident


async def check_admissible(
    r: Resident | None,
    key: ModelKey,
    load_if_cold: bool,
    deadline: float | None,
    *,
    load_on_demand: bool,
    rejected: collections.Counter[tuple[str, str]],
) -> None:
    """Refuse a request the model's state cannot take (draining, cold without a load);
    `rejected` counts refusals by (model, reason)."""
    if r is not None and r.state is ResidencyState.DRAINING:
        if not (load_if_cold and r.unload_task is not None):
            rejected[key, "draining"] += 1
            raise Unavailable(f"model {key} is being unloaded on this worker; try another")
        # Evicted a moment ago to make room for another model: reload it after.
        await within(deadline, asyncio.shield(r.unload_task), f"{key} was unloading")
    state = r.state if r is not None else ResidencyState.COLD
    if state in (ResidencyState.WARM, ResidencyState.LOADING):
        return
    if load_if_cold and (refusal := backoff_refusal(key, r)) is not None:
        rejected[key, "load_backoff"] += 1
        raise refusal
    if load_if_cold and load_on_demand:
        return
    detail = f": its last load failed: {r.error}" if r is not None and r.error else ""
    how = "set load_if_cold" if load_on_demand else "(load on demand is off)"
    rejected[key, "not_loaded"] += 1
    raise FailedPrecondition(
        f"model {key} is not loaded on this worker ({state.value}{detail}); "
        f"call LoadModel first or {how}",
        reason="MODEL_NOT_LOADED",
        metadata={"model": key},
    )
