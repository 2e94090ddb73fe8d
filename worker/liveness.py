"""The worker's side of telling busy from silent (issue #11, frozen workers).

A Generate is acknowledged at once (GenerationAccepted, with the keepalive interval),
then a GenerationKeepalive with the request's phase goes out whenever nothing else was
sent for one interval: while it waits for its model to load, for a slot, for its
prompt, and between slow tokens. The router times silences, never a legitimate wait:
events keep coming for as long as this process runs its event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import TypeAlias

from google.protobuf import duration_pb2

from modelyard.streaming import BoundedStream
from modelyard.v1 import worker_pb2

log = logging.getLogger(__name__)

Phase: TypeAlias = worker_pb2.GenerationPhase.ValueType
QUEUED = worker_pb2.GENERATION_PHASE_QUEUED
LOADING = worker_pb2.GENERATION_PHASE_LOADING
PREFILL = worker_pb2.GENERATION_PHASE_PREFILL
DECODING = worker_pb2.GENERATION_PHASE_DECODING

DEFAULT_KEEPALIVE_S = 0.5


def interval_of(seconds: float) -> duration_pb2.Duration:
    interval = duration_pb2.Duration()
    interval.FromMilliseconds(round(seconds * 1000))
    return interval


class Liveness:
    """The acknowledgement and keepalives of one Generate stream, written through
    `stream`; `phase` (or `phase_of`, read at each keepalive) says where it stands."""

    def __init__(self, stream: BoundedStream, interval_s: float = DEFAULT_KEEPALIVE_S) -> None:
        self._stream = stream
        self._interval_s = interval_s
        self.phase_of: Callable[[], Phase] = lambda: QUEUED

    def set_phase(self, phase: Phase) -> None:
        self.phase_of = lambda: phase

    def accepted(self) -> worker_pb2.WorkerServiceGenerateResponse:
        return worker_pb2.WorkerServiceGenerateResponse(
            accepted=worker_pb2.GenerationAccepted(keepalive_interval=interval_of(self._interval_s))
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Acknowledge, then keep the stream alive until the block ends."""
        await self._stream.write(self.accepted())
        beat = asyncio.create_task(self._beat(), name="generate-keepalive")
        try:
            yield
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    async def _beat(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wait = self._stream.last_write + self._interval_s - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            keepalive = worker_pb2.GenerationKeepalive(phase=self.phase_of())
            try:
                await self._stream.write(
                    worker_pb2.WorkerServiceGenerateResponse(keepalive=keepalive)
                )
            except Exception as err:
                log.debug("keepalive stopped: %s", type(err).__name__)
                return
