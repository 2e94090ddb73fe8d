"""Who may call OutcomeService: outcome writes need the outcome-writer token (or the admin's),
never a reader's; stats need a reader (or the admin). Real gate, servicer and store."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import grpc
import pytest

from modelyard.bearer import bearer_metadata
from modelyard.server import start_server
from modelyard.v1 import outcomes_pb2, outcomes_pb2_grpc
from registry.auth import registry_gate
from registry.outcome_service import SERVICE_NAME, add_to_server
from registry.outcomes import OutcomeStore
from registry.store import open_store

ADMIN, READER, WRITER = "adm", "rdr", "wrt"


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[outcomes_pb2_grpc.OutcomeServiceAsyncStub]:
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    gate = registry_gate(
        ADMIN, reader_tokens=[f"routers:{READER}"], outcome_writer_tokens=[f"routers:{WRITER}"]
    )
    running = await start_server(
        "127.0.0.1:0",
        functools.partial(add_to_server, OutcomeStore(store.engine)),
        [SERVICE_NAME],
        interceptors=[gate],
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        yield cast(
            "outcomes_pb2_grpc.OutcomeServiceAsyncStub",
            outcomes_pb2_grpc.OutcomeServiceStub(channel),
        )
    await running.stop(0)
    await store.close()


async def code_of(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_outcome_writes_need_the_writer_or_admin_stats_a_reader(
    stub: outcomes_pb2_grpc.OutcomeServiceAsyncStub,
) -> None:
    def record(request_id: str, token: str | None) -> object:
        request = outcomes_pb2.RecordOutcomesRequest(
            outcomes=[outcomes_pb2.Outcome(request_id=request_id, model="m", version="1")]
        )
        metadata = bearer_metadata(token) if token else None
        return stub.RecordOutcomes(request, metadata=metadata)

    assert await code_of(record("a", None)) == grpc.StatusCode.UNAUTHENTICATED
    assert await code_of(record("b", READER)) == grpc.StatusCode.PERMISSION_DENIED
    assert await code_of(record("c", WRITER)) == grpc.StatusCode.OK
    assert await code_of(record("d", ADMIN)) == grpc.StatusCode.OK
    feedback = outcomes_pb2.AttachFeedbackRequest(request_id="c", score=1.0, comment="ok")
    refused = stub.AttachFeedback(feedback, metadata=bearer_metadata(READER))
    assert await code_of(refused) == grpc.StatusCode.PERMISSION_DENIED
    taken = stub.AttachFeedback(feedback, metadata=bearer_metadata(WRITER))
    assert await code_of(taken) == grpc.StatusCode.OK

    query = outcomes_pb2.QueryOutcomeStatsRequest()
    assert await code_of(stub.QueryOutcomeStats(query)) == grpc.StatusCode.UNAUTHENTICATED
    writer_reads = stub.QueryOutcomeStats(query, metadata=bearer_metadata(WRITER))
    assert await code_of(writer_reads) == grpc.StatusCode.PERMISSION_DENIED
    reply = await stub.QueryOutcomeStats(query, metadata=bearer_metadata(READER))
    assert reply.models[0].traffic.requests == 2 and reply.models[0].traffic.feedback_count == 1
