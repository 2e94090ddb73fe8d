"""In-process test doubles of RegistryService and WorkerService, and a router wired to them.

Every double is a real grpc.aio server on 127.0.0.1:0 started with
`modelyard.server.start_server`, so the router under test talks real gRPC:
deadlines, cancellation and connection failures behave as in production.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, Final, TypeAlias, cast

import grpc

from modelyard.server import RunningServer, start_server
from modelyard.telemetry import client_interceptors
from modelyard.v1 import (
    common_pb2,
    model_pb2,
    registry_pb2,
    registry_pb2_grpc,
    router_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)
from router.assembly import RouterParts, build, start_watch, stop_watch
from router.auth import router_gate
from router.catalog import Catalog
from router.config import RouterSettings
from router.service import SERVICE_NAME, add_to_server
from router.workers import WorkerPool

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

# One event loop for all router tests: grpc.aio binds its completion queue to the loops
# it has seen, and a fresh loop per test leaves it poking closed ones (grpc#25364).
LOOP_SCOPE: Final = "session"

REGISTRY_SERVICE = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
WORKER_SERVICE = worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name


def make_model(
    name: str = "tiny",
    version: str = "1",
    *,
    stage: model_pb2.Stage.ValueType = model_pb2.STAGE_PRODUCTION,
    chat: bool = True,
    completion: bool = True,
    tags: Sequence[str] = (),
    context_length: int = 2048,
) -> model_pb2.Model:
    return model_pb2.Model(
        name=name,
        version=version,
        artifact=model_pb2.Artifact(uri=f"file:///models/{name}-{version}.gguf"),
        capabilities=model_pb2.Capabilities(
            chat=chat, completion=completion, tags=list(tags), context_length=context_length
        ),
        stage=stage,
    )


def free_address() -> str:
    """A loopback address nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# --- Registry double -------------------------------------------------------------------


async def _abort_unimplemented(self: object, request: object, context: Context) -> None:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of this test double")


# Any: one stand-in for every RPC the doubles leave out, whatever its message types.
_unimplemented: Any = _abort_unimplemented


class FakeRegistry(registry_pb2_grpc.RegistryServiceServicer):
    """GetModel and ListModels over a list of models kept newest-first within a name."""

    def __init__(self, models: Sequence[model_pb2.Model] = ()) -> None:
        self.models = list(models)
        self.routes: list[model_pb2.Route] = []
        self.revision = 7
        self.get_calls = 0
        self.list_calls = 0
        self.watch_calls: list[int] = []  # since_revision of each Watch

    RegisterModel = SetStage = DeleteModel = _unimplemented
    PutRoute = GetRoute = ListRoutes = DeleteRoute = ControlRollout = _unimplemented

    async def Watch(
        self, request: registry_pb2.WatchRequest, context: Context
    ) -> AsyncIterator[registry_pb2.WatchResponse]:
        """A snapshot, then silence (changes are tested on RegistryCache directly)."""
        self.watch_calls.append(request.since_revision)
        if request.since_revision != self.revision:
            yield registry_pb2.WatchResponse(
                snapshot=registry_pb2.CatalogSnapshot(
                    revision=self.revision, models=self.models, routes=self.routes
                )
            )
        await asyncio.Event().wait()

    async def GetModel(
        self, request: registry_pb2.GetModelRequest, context: Context
    ) -> registry_pb2.GetModelResponse:
        self.get_calls += 1
        versions = [m for m in self.models if m.name == request.name]
        if request.version:
            versions = [m for m in versions if m.version == request.version]
        else:
            live = [m for m in versions if m.stage != model_pb2.STAGE_ARCHIVED]
            production = [m for m in live if m.stage == model_pb2.STAGE_PRODUCTION]
            versions = production or live
        if not versions:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.name} not found")
        return registry_pb2.GetModelResponse(model=versions[0])

    async def ListModels(
        self, request: registry_pb2.ListModelsRequest, context: Context
    ) -> registry_pb2.ListModelsResponse:
        self.list_calls += 1
        models = [
            m
            for m in self.models
            if (not request.require_chat or m.capabilities.chat)
            and (not request.require_completion or m.capabilities.completion)
            and set(request.tags) <= set(m.capabilities.tags)
        ]
        # One model per page, to exercise the router's paging.
        start = int(request.page_token or 0)
        page = models[start : start + 1]
        more = start + 1 < len(models)
        return registry_pb2.ListModelsResponse(
            models=page, next_page_token=str(start + 1) if more else "", revision=self.revision
        )


@dataclass
class RegistryUnderTest:
    fake: FakeRegistry
    server: RunningServer

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"


# --- Worker double ---------------------------------------------------------------------


@dataclass(frozen=True)
class Fail:
    """Script step: end the call with this status."""

    code: grpc.StatusCode
    message: str


@dataclass(frozen=True)
class Pause:
    """Script step: wait before the next step."""

    seconds: float


@dataclass(frozen=True)
class Gate:
    """Script step: wait until the test opens the gate (sets the event)."""

    opened: asyncio.Event


Step: TypeAlias = worker_pb2.WorkerServiceGenerateResponse | Fail | Pause | Gate


def started() -> worker_pb2.WorkerServiceGenerateResponse:
    return worker_pb2.WorkerServiceGenerateResponse(started=common_pb2.GenerationStarted())


def delta(text: str, *token_ids: int) -> worker_pb2.WorkerServiceGenerateResponse:
    return worker_pb2.WorkerServiceGenerateResponse(
        delta=common_pb2.TokenDelta(text=text, token_ids=list(token_ids))
    )


def finished(output_tokens: int = 2) -> worker_pb2.WorkerServiceGenerateResponse:
    return worker_pb2.WorkerServiceGenerateResponse(
        finished=common_pb2.GenerationFinished(
            finish_reason=common_pb2.FINISH_REASON_STOP,
            usage=common_pb2.Usage(input_tokens=3, output_tokens=output_tokens),
            timings=common_pb2.Timings(ttft_ms=12.5, total_ms=40.0),
        )
    )


def happy_script() -> list[Step]:
    return [started(), delta("Hel", 1), delta("lo", 2), finished(2)]


class FakeWorker(worker_pb2_grpc.WorkerServiceServicer):
    """Streams a scripted generation and pushes a settable status."""

    def __init__(self, worker_id: str, script: Sequence[Step] = ()) -> None:
        self.worker_id = worker_id
        self.script: list[Step] = list(script) or happy_script()
        self.requests: list[worker_pb2.WorkerServiceGenerateRequest] = []
        self.time_remaining: list[float | None] = []
        self.cancelled = asyncio.Event()
        # "name@version" labels this worker refuses with UNAVAILABLE before any token.
        self.failing_models: set[str] = set()
        self.status = worker_pb2.WorkerStatus(worker_id=worker_id)
        self._changed = asyncio.Event()

    LoadModel = UnloadModel = GetStatus = Embed = _unimplemented

    def set_models(self, *models: worker_pb2.ModelStatus, queued_tokens: int = 0) -> None:
        self.status = worker_pb2.WorkerStatus(
            worker_id=self.worker_id,
            models=list(models),
            queued_tokens=queued_tokens,
            sequence=self.status.sequence + 1,
        )
        self._changed.set()

    async def Generate(
        self, request: worker_pb2.WorkerServiceGenerateRequest, context: Context
    ) -> AsyncIterator[worker_pb2.WorkerServiceGenerateResponse]:
        self.requests.append(request)
        self.time_remaining.append(context.time_remaining())
        if f"{request.model.name}@{request.model.version}" in self.failing_models:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "model broken here")
        try:
            for step in self.script:
                if isinstance(step, Pause):
                    await asyncio.sleep(step.seconds)
                elif isinstance(step, Gate):
                    await step.opened.wait()
                elif isinstance(step, Fail):
                    await context.abort(step.code, step.message)
                elif step.WhichOneof("event") == "started":
                    # A worker names itself and nothing else: request id, model, route,
                    # arm and attempt are the router's to state.
                    event = worker_pb2.WorkerServiceGenerateResponse()
                    event.CopyFrom(step)
                    event.started.worker_id = self.worker_id
                    yield event
                else:
                    yield step
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def WatchStatus(
        self, request: worker_pb2.WatchStatusRequest, context: Context
    ) -> AsyncIterator[worker_pb2.WatchStatusResponse]:
        heartbeat_s = request.heartbeat_interval.ToMilliseconds() / 1000 or 5.0
        while True:
            self._changed.clear()
            yield worker_pb2.WatchStatusResponse(status=self.status)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), heartbeat_s)


@dataclass
class WorkerUnderTest:
    fake: FakeWorker
    server: RunningServer

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"


WorkerFactory: TypeAlias = Callable[..., Awaitable[WorkerUnderTest]]


# --- The router under test ---------------------------------------------------------------


@dataclass
class RouterUnderTest:
    stub: router_pb2_grpc.RouterServiceAsyncStub
    pool: WorkerPool
    catalog: Catalog
    parts: RouterParts


@asynccontextmanager
async def running_router(
    registry_address: str,
    worker_addresses: Sequence[str],
    *,
    connect_timeout_s: float = 0.5,
    max_attempts: int = 3,
    watch: bool = False,
    **settings: Any,
) -> AsyncIterator[RouterUnderTest]:
    """A RouterService server wired like router.main.serve, on a free port. `watch`
    follows the registry's Watch; `settings` are further RouterSettings fields."""
    registry_channel = grpc.aio.insecure_channel(
        registry_address, interceptors=client_interceptors()
    )
    config = RouterSettings(
        registry_address=registry_address,
        catalog_ttl_s=5.0,
        registry_timeout_s=2.0,
        connect_timeout_s=connect_timeout_s,
        max_attempts=max_attempts,
        **settings,
    )
    pool = WorkerPool(worker_addresses, heartbeat_s=0.2)
    pool.start()
    parts = build(
        config,
        cast(
            "registry_pb2_grpc.RegistryServiceAsyncStub",
            registry_pb2_grpc.RegistryServiceStub(registry_channel),
        ),
        pool,
    )
    watcher = start_watch(parts, config) if watch else None
    servicer = parts.servicer
    server = await start_server(
        "127.0.0.1:0",
        lambda s: add_to_server(servicer, s),
        [SERVICE_NAME],
        interceptors=[router_gate(config.api_keys)],
        limits=config.limits,
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield RouterUnderTest(
            cast(
                "router_pb2_grpc.RouterServiceAsyncStub",
                router_pb2_grpc.RouterServiceStub(channel),
            ),
            pool,
            parts.catalog,
            parts,
        )
    finally:
        await channel.close()
        await server.stop(0)
        if watcher is not None:
            await stop_watch(watcher)
        await pool.close()
        await registry_channel.close()
