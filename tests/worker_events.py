"""Worker Generate streams as the tests read them: the liveness events (acknowledgement,
keepalives; worker/liveness.py) carry no content and are left out."""

from __future__ import annotations

from collections.abc import AsyncIterable

import grpc

from modelyard.v1 import worker_pb2

LIVENESS = frozenset({"accepted", "keepalive"})


def content(
    events: list[worker_pb2.WorkerServiceGenerateResponse],
) -> list[worker_pb2.WorkerServiceGenerateResponse]:
    return [e for e in events if e.WhichOneof("event") not in LIVENESS]


async def collect(
    call: AsyncIterable[worker_pb2.WorkerServiceGenerateResponse],
) -> list[worker_pb2.WorkerServiceGenerateResponse]:
    return content([e async for e in call])


async def next_content(call: grpc.aio.UnaryStreamCall) -> worker_pb2.WorkerServiceGenerateResponse:
    """The next event that is not a liveness event (EOF raises)."""
    while True:
        event = await call.read()
        assert event is not grpc.aio.EOF, "the stream ended"
        if event.WhichOneof("event") not in LIVENESS:
            return event  # type: ignore[no-any-return]
