"""The part of a model's memory its prefix cache may fill, shrunk first under pressure.

A llama.cpp model's estimate counts `prefix_cache_share` x context tokens of KV for
the prefixes it keeps in host memory (worker/engines/llama_prefix.py). That part is
a reserve, not a need: when another model needs room, the cached prefixes of the
models in memory go first, busy models' too (a live request runs on its own copy of
what it restored, so none fails), before any idle model is evicted
(`eviction.plan_eviction`). Once room returns (a model unloaded), the reserves grow
back within the budget, the most recently used model's first.

Only `ModelManager` calls these, under its lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from worker.engines.prefix_summary import PrefixCacheResizer
from worker.residency.state import PrefixReserve, ResidencyState, Resident

log = logging.getLogger(__name__)


def _resizable(r: Resident) -> PrefixReserve | None:
    ready = r.state is ResidencyState.WARM and isinstance(r.engine, PrefixCacheResizer)
    return r.prefix if ready else None


def reclaimable_bytes(r: Resident) -> int:
    """What shrinking the model's prefix cache to nothing would free."""
    reserve = _resizable(r)
    return reserve.bytes if reserve is not None else 0


async def shrink(r: Resident, need_bytes: int) -> None:
    """Free at least `need_bytes` of the model's reserve (whole tokens), at most all of it."""
    reserve = _resizable(r)
    if reserve is None or need_bytes <= 0:
        return
    tokens = min(-(-need_bytes // reserve.token_bytes), reserve.tokens)
    await _resize(r, reserve, reserve.tokens - tokens)
    log.info("%s: prefix cache limit %d tokens (room for another model)", r.key, reserve.tokens)


async def grow_back(residents: Iterable[Resident], free_bytes: int) -> bool:
    """Give shrunk reserves back what fits in `free_bytes`, most recently used first;
    True when any grew."""
    grew = False
    for r in sorted(residents, key=lambda r: r.last_used, reverse=True):
        reserve = _resizable(r)
        if reserve is None or reserve.tokens >= reserve.full_tokens:
            continue
        tokens = min(reserve.full_tokens - reserve.tokens, free_bytes // reserve.token_bytes)
        if tokens <= 0:
            break
        free_bytes -= tokens * reserve.token_bytes
        await _resize(r, reserve, reserve.tokens + tokens)
        log.info("%s: prefix cache limit back to %d tokens", r.key, reserve.tokens)
        grew = True
    return grew


async def _resize(r: Resident, reserve: PrefixReserve, tokens: int) -> None:
    engine = r.engine
    assert isinstance(engine, PrefixCacheResizer)
    # The decode thread may hold the cache's lock for a save (~15 ms per 1,000 tokens).
    await asyncio.to_thread(engine.set_prefix_cache_limit, tokens)
    r.memory_bytes += (tokens - reserve.tokens) * reserve.token_bytes
    reserve.tokens = tokens
