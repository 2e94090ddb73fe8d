"""The SDK against a real gRPC RouterService on loopback that fails on purpose: retries
before the first event (honouring the server's hint), never after it; the environment
names the router; the stats, feedback and workers calls."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from modelyard.client import AsyncClient, Client
from modelyard.errors import ModelyardError, ResourceExhausted, Unavailable, abort
from modelyard.server import RunningServer, start_server
from modelyard.v1 import common_pb2, router_pb2, router_pb2_grpc


@dataclass
class Script:
    """What the fake router does with each Generate attempt, in order; then it succeeds."""

    failures: list[ModelyardError] = field(default_factory=list)
    fail_after_first_event: bool = False
    attempts: list[float] = field(default_factory=list)
    feedback: list[router_pb2.RecordFeedbackRequest] = field(default_factory=list)


class FakeRouter(router_pb2_grpc.RouterServiceServicer):
    """Complete and ListModels stay unimplemented (the base class answers UNIMPLEMENTED)."""

    def __init__(self, script: Script) -> None:
        self.script = script

    async def Generate(
        self, request: router_pb2.GenerateRequest, context: Any
    ) -> AsyncIterator[router_pb2.GenerateResponse]:
        self.script.attempts.append(time.monotonic())
        if self.script.failures:
            await abort(context, self.script.failures.pop(0))
        yield router_pb2.GenerateResponse(started=common_pb2.GenerationStarted(request_id="r1"))
        if self.script.fail_after_first_event:
            await abort(context, Unavailable("worker went away"))
        yield router_pb2.GenerateResponse(delta=common_pb2.TokenDelta(text="hello", token_ids=[1]))
        yield router_pb2.GenerateResponse(finished=common_pb2.GenerationFinished())

    async def RecordFeedback(
        self, request: router_pb2.RecordFeedbackRequest, context: Any
    ) -> router_pb2.RecordFeedbackResponse:
        self.script.feedback.append(request)
        return router_pb2.RecordFeedbackResponse()

    async def GetRoutingStats(
        self, request: router_pb2.GetRoutingStatsRequest, context: Any
    ) -> router_pb2.GetRoutingStatsResponse:
        stats = router_pb2.ModelStats(model=request.model or "all")
        return router_pb2.GetRoutingStatsResponse(models=[stats])

    async def ListWorkers(
        self, request: router_pb2.ListWorkersRequest, context: Any
    ) -> router_pb2.ListWorkersResponse:
        return router_pb2.ListWorkersResponse(workers=[router_pb2.WorkerInfo(worker_id="w0")])


@pytest.fixture
def router() -> Iterator[tuple[str, Script]]:
    """The fake router on its own loop and thread, so blocking clients can call it."""
    script = Script()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    server: list[RunningServer] = []

    async def serve() -> None:
        def register(s: grpc.aio.Server) -> None:
            fake = FakeRouter(script)  # type: ignore[abstract]
            router_pb2_grpc.add_RouterServiceServicer_to_server(fake, s)

        server.append(await start_server("127.0.0.1:0", register, []))
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(timeout=30)
    assert started.is_set()
    yield f"127.0.0.1:{server[0].port}", script
    asyncio.run_coroutine_threadsafe(server[0].stop(0), loop).result(timeout=30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=30)


def test_busy_and_unavailable_are_retried_before_the_first_event(
    router: tuple[str, Script],
) -> None:
    address, script = router
    script.failures = [ResourceExhausted("queue full"), Unavailable("no worker")]
    with Client(address, timeout_s=60) as client:
        stream = client.generate(model="m", prompt="hi")
        assert stream.text == "" and [d.text for d in stream] == ["hello"]
    assert len(script.attempts) == 3


def test_the_servers_retry_hint_sets_the_wait(router: tuple[str, Script]) -> None:
    address, script = router
    script.failures = [ResourceExhausted("queue full", retry_after_s=1.0)]
    with Client(address, timeout_s=60) as client:
        assert [d.text for d in client.generate(model="m", prompt="hi")] == ["hello"]
    first, second = script.attempts
    # gRPC's own first backoff is at most 0.25 s: a longer wait is the hint's.
    assert second - first >= 0.9


def test_no_retry_once_an_event_has_arrived(router: tuple[str, Script]) -> None:
    address, script = router
    script.fail_after_first_event = True
    with Client(address, timeout_s=60) as client:
        stream = client.generate(model="m", prompt="hi")
        with pytest.raises(Unavailable):
            list(stream)
        assert stream.started is not None
    assert len(script.attempts) == 1


def test_retries_give_up_after_four_attempts(router: tuple[str, Script]) -> None:
    address, script = router
    script.failures = [Unavailable(f"no worker {i}") for i in range(6)]
    with Client(address, timeout_s=60) as client, pytest.raises(Unavailable):
        list(client.generate(model="m", prompt="hi"))
    assert len(script.attempts) == 4


def test_the_environment_names_the_router(
    router: tuple[str, Script], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, _ = router
    monkeypatch.setenv("MODELYARD_ROUTER", address)
    monkeypatch.setenv("MODELYARD_API_KEY", "k-123")
    with Client() as client:
        assert client.connection.address == address
        assert client.connection.api_key == "k-123"
        assert [d.text for d in client.generate(model="m", prompt="hi")] == ["hello"]


async def test_stats_feedback_and_workers_sync_and_async(router: tuple[str, Script]) -> None:
    address, script = router
    with Client(address) as client:
        client.record_feedback("r1", 0.5, "good")
        assert client.routing_stats(model="m").models[0].model == "m"
        assert [w.worker_id for w in client.list_workers().workers] == ["w0"]
    async with AsyncClient(address) as aclient:
        await aclient.record_feedback("r2", -1.0)
        assert (await aclient.routing_stats()).models[0].model == "all"
        assert [w.worker_id for w in (await aclient.list_workers()).workers] == ["w0"]
    assert [(f.request_id, f.score, f.comment) for f in script.feedback] == [
        ("r1", 0.5, "good"),
        ("r2", -1.0, ""),
    ]
