"""An engine's event stream as the engine tests read it: the token ids it streamed and the
Finished that ended it."""

from __future__ import annotations

from collections.abc import AsyncIterable

from worker.engines.base import Engine, EngineEvent, EngineRequest, Finished, Piece


async def drain(stream: AsyncIterable[EngineEvent]) -> tuple[list[int], Finished]:
    """Read the stream to its end: (token ids, the Finished it ended with)."""
    events = [e async for e in stream]
    finished = events[-1]
    assert isinstance(finished, Finished)
    return [t for e in events if isinstance(e, Piece) for t in e.token_ids], finished


async def run(engine: Engine, req: EngineRequest) -> tuple[list[int], Finished]:
    return await drain(engine.generate(req))
