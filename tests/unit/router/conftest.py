"""Fixtures that start the router's test doubles (see doubles.py) on free loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence

import pytest
import pytest_asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from modelyard.server import start_server
from modelyard.v1 import model_pb2, registry_pb2_grpc, worker_pb2_grpc
from tests.unit.router.doubles import (
    LOOP_SCOPE,
    REGISTRY_SERVICE,
    WORKER_SERVICE,
    FakeRegistry,
    FakeWorker,
    RegistryUnderTest,
    Step,
    WorkerFactory,
    WorkerUnderTest,
    make_model,
)


@pytest_asyncio.fixture(loop_scope=LOOP_SCOPE)
async def registry() -> AsyncIterator[RegistryUnderTest]:
    fake = FakeRegistry(
        [make_model("tiny", "1"), make_model("tiny", "2", stage=model_pb2.STAGE_STAGING)]
    )
    server = await start_server(
        "127.0.0.1:0",
        lambda s: registry_pb2_grpc.add_RegistryServiceServicer_to_server(fake, s),
        [REGISTRY_SERVICE],
    )
    yield RegistryUnderTest(fake, server)
    await server.stop(0)


@pytest_asyncio.fixture(loop_scope=LOOP_SCOPE)
async def start_worker() -> AsyncIterator[WorkerFactory]:
    started_workers: list[WorkerUnderTest] = []

    async def start(worker_id: str = "w1", script: Sequence[Step] = ()) -> WorkerUnderTest:
        fake = FakeWorker(worker_id, script)
        server = await start_server(
            "127.0.0.1:0",
            lambda s: worker_pb2_grpc.add_WorkerServiceServicer_to_server(fake, s),
            [WORKER_SERVICE],
        )
        started_workers.append(WorkerUnderTest(fake, server))
        return started_workers[-1]

    yield start
    for w in started_workers:
        await w.server.stop(0)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Spans finished during the test (the global provider is shared with other tests)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    yield exporter
    processor.shutdown()
