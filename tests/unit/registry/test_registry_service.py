"""RegistryService over a real in-process grpc.aio server, called with the generated stub."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelyard.bearer import bearer_metadata
from modelyard.errors import from_rpc_error
from modelyard.server import start_server
from modelyard.v1 import model_pb2, registry_pb2, registry_pb2_grpc
from registry.auth import SERVICE_NAME, registry_gate
from registry.config import RegistrySettings
from registry.main import serve
from registry.service import add_to_server
from registry.store import RegistryStore, open_store


@pytest.fixture
async def channel(tmp_path: Path) -> AsyncIterator[grpc.aio.Channel]:
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    running = await start_server(
        "127.0.0.1:0", functools.partial(add_to_server, store), [SERVICE_NAME]
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as chan:
        yield chan
    await running.stop(0)
    await store.close()


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> registry_pb2_grpc.RegistryServiceAsyncStub:
    # grpc is untyped here, so the stub's overload cannot tell that this channel is async.
    return cast(
        "registry_pb2_grpc.RegistryServiceAsyncStub", registry_pb2_grpc.RegistryServiceStub(channel)
    )


def model(version: str = "1", uri: str = "file:///models/smollm2.gguf") -> model_pb2.Model:
    return model_pb2.Model(
        name="smollm2",
        version=version,
        artifact=model_pb2.Artifact(uri=uri, sha256="ab" * 32),
        capabilities=model_pb2.Capabilities(chat=True),
    )


async def test_register_get_list_round_trip(
    stub: registry_pb2_grpc.RegistryServiceAsyncStub,
) -> None:
    registered = await stub.RegisterModel(registry_pb2.RegisterModelRequest(model=model()))
    again = await stub.RegisterModel(registry_pb2.RegisterModelRequest(model=model()))
    got = await stub.GetModel(registry_pb2.GetModelRequest(name="smollm2"))
    listed = await stub.ListModels(registry_pb2.ListModelsRequest(require_chat=True))

    assert registered.created and registered.revision == 1
    assert registered.model.stage == model_pb2.STAGE_STAGING
    assert not again.created and again.revision == 1
    assert got.model == registered.model
    assert list(listed.models) == [registered.model]
    assert listed.revision == 1
    assert listed.next_page_token == ""


async def test_invalid_argument_names_the_field(
    stub: registry_pb2_grpc.RegistryServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RegisterModel(registry_pb2.RegisterModelRequest(model=model(uri="")))

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model.artifact.uri" in (caught.value.details() or "")
    err = from_rpc_error(caught.value)
    assert [v.field for v in err.violations] == ["model.artifact.uri"]


async def test_missing_model_is_invalid_argument(
    stub: registry_pb2_grpc.RegistryServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RegisterModel(registry_pb2.RegisterModelRequest())

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in from_rpc_error(caught.value).violations] == ["model"]


async def test_not_found(stub: registry_pb2_grpc.RegistryServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetModel(registry_pb2.GetModelRequest(name="nope"))

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "model 'nope' not found" in (caught.value.details() or "")
    assert from_rpc_error(caught.value).reason == "MODEL_NOT_FOUND"


async def test_already_exists(stub: registry_pb2_grpc.RegistryServiceAsyncStub) -> None:
    await stub.RegisterModel(registry_pb2.RegisterModelRequest(model=model()))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RegisterModel(
            registry_pb2.RegisterModelRequest(model=model(uri="file:///other.gguf"))
        )

    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "smollm2@1" in (caught.value.details() or "")


async def test_health_reports_serving(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_serve_answers_until_sigterm_then_stops(tmp_path: Path) -> None:
    settings = RegistrySettings(
        address="127.0.0.1:0", database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    )
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(serve(settings, on_ready=ready.set_result))
    port = await asyncio.wait_for(ready, 10)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
        stub = registry_pb2_grpc.RegistryServiceStub(chan)
        reply = await stub.RegisterModel(registry_pb2.RegisterModelRequest(model=model()))
        assert reply.created

    # serve() installed its handler before on_ready returned control to this task.
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(server, 10)


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_REGISTRY_ADDRESS", "0.0.0.0:6000")
    monkeypatch.setenv("MODELYARD_REGISTRY_DATABASE_URL", "sqlite+aiosqlite:///x.db")

    settings = RegistrySettings()

    assert settings.address == "0.0.0.0:6000"
    assert settings.database_url == "sqlite+aiosqlite:///x.db"
    assert settings.log_level == "INFO"


def test_default_database_is_under_the_home_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELYARD_REGISTRY_DATABASE_URL", raising=False)

    url = RegistrySettings().database_url

    assert url.startswith("sqlite+aiosqlite:///")
    assert url.endswith(str(Path("~/.modelyard/registry.db").expanduser()))


async def test_routes_stages_and_deletes_over_grpc(
    stub: registry_pb2_grpc.RegistryServiceAsyncStub,
) -> None:
    await stub.RegisterModel(registry_pb2.RegisterModelRequest(model=model("1")))
    staged = await stub.SetStage(
        registry_pb2.SetStageRequest(name="smollm2", version="1", stage=model_pb2.STAGE_PRODUCTION)
    )
    route = model_pb2.Route(name="chat", arms=[model_pb2.RouteArm(model="smollm2", weight=1)])
    put = await stub.PutRoute(registry_pb2.PutRouteRequest(route=route))
    got = await stub.GetRoute(registry_pb2.GetRouteRequest(name="chat"))
    listed = await stub.ListRoutes(registry_pb2.ListRoutesRequest())

    assert staged.model.stage == model_pb2.STAGE_PRODUCTION and staged.revision == 2
    assert put.revision == 3 and got.route == put.route and list(listed.routes) == [put.route]

    with pytest.raises(grpc.aio.AioRpcError) as in_use:
        await stub.DeleteModel(registry_pb2.DeleteModelRequest(name="smollm2", version="1"))
    assert in_use.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.PutRoute(
            registry_pb2.PutRouteRequest(
                route=model_pb2.Route(
                    name="chat", arms=[model_pb2.RouteArm(model="smollm2", weight=0)]
                )
            )
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in from_rpc_error(bad.value).violations] == ["route.arms[0].weight"]

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.PutRoute(registry_pb2.PutRouteRequest())
    assert [v.field for v in from_rpc_error(missing.value).violations] == ["route"]

    deleted = await stub.DeleteRoute(registry_pb2.DeleteRouteRequest(name="chat"))
    gone = await stub.DeleteModel(registry_pb2.DeleteModelRequest(name="smollm2", version="1"))
    assert (deleted.revision, gone.revision) == (4, 5)


async def test_watch_streams_over_grpc_and_resumes(
    stub: registry_pb2_grpc.RegistryServiceAsyncStub,
) -> None:
    await stub.RegisterModel(registry_pb2.RegisterModelRequest(model=model("1")))
    call = stub.Watch(registry_pb2.WatchRequest())
    first = await asyncio.wait_for(call.read(), 10)
    await stub.RegisterModel(registry_pb2.RegisterModelRequest(model=model("2")))
    second = await asyncio.wait_for(call.read(), 10)
    call.cancel()

    assert first.snapshot.revision == 1 and len(first.snapshot.models) == 1
    assert second.change.revision == 2

    await stub.RegisterModel(registry_pb2.RegisterModelRequest(model=model("3")))
    resumed = stub.Watch(registry_pb2.WatchRequest(since_revision=2))
    third = await asyncio.wait_for(resumed.read(), 10)
    resumed.cancel()
    assert third.change.revision == 3 and third.change.model.version == "3"


async def test_watchers_over_grpc_share_one_serialized_snapshot(
    guarded_registry: tuple[registry_pb2_grpc.RegistryServiceAsyncStub, RegistryStore],
) -> None:
    """A registry restart meets every worker's Watch at once: the snapshot is read and
    serialized once for all of them (through the gate and the server's interceptors, as
    deployed), each watcher parses the whole catalogue, and a write makes the next
    watcher's snapshot a new one."""
    stub, store = guarded_registry
    admin = bearer_metadata("s3cret")
    for version in ("1", "2", "3"):
        await stub.RegisterModel(
            registry_pb2.RegisterModelRequest(model=model(version)), metadata=admin
        )
    calls = [stub.Watch(registry_pb2.WatchRequest()) for _ in range(20)]
    firsts = await asyncio.wait_for(asyncio.gather(*(c.read() for c in calls)), 20)
    encoded_once = store.snapshot_encodings
    await stub.RegisterModel(registry_pb2.RegisterModelRequest(model=model("4")), metadata=admin)
    changes = await asyncio.wait_for(asyncio.gather(*(c.read() for c in calls)), 20)
    fresh_call = stub.Watch(registry_pb2.WatchRequest())
    fresh = await asyncio.wait_for(fresh_call.read(), 10)
    for call in [*calls, fresh_call]:
        call.cancel()

    assert encoded_once == 1
    assert store.snapshot_encodings == 2
    for first in firsts:
        assert first.snapshot.revision == 3
        assert [m.version for m in first.snapshot.models] == ["1", "2", "3"]
    assert {(c.change.revision, c.change.model.version) for c in changes} == {(4, "4")}
    assert fresh.snapshot.revision == 4 and len(fresh.snapshot.models) == 4


@pytest.fixture
async def guarded_registry(
    tmp_path: Path,
) -> AsyncIterator[tuple[registry_pb2_grpc.RegistryServiceAsyncStub, RegistryStore]]:
    """A registry behind its gate (admin token "s3cret"), and its store."""
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    running = await start_server(
        "127.0.0.1:0",
        functools.partial(add_to_server, store),
        [SERVICE_NAME],
        interceptors=[registry_gate("s3cret")],
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as chan:
        stub = registry_pb2_grpc.RegistryServiceStub(chan)
        yield cast("registry_pb2_grpc.RegistryServiceAsyncStub", stub), store
    await running.stop(0)
    await store.close()


@pytest.fixture
def guarded(
    guarded_registry: tuple[registry_pb2_grpc.RegistryServiceAsyncStub, RegistryStore],
) -> registry_pb2_grpc.RegistryServiceAsyncStub:
    return guarded_registry[0]


async def test_writes_need_the_admin_token_reads_do_not(
    guarded: registry_pb2_grpc.RegistryServiceAsyncStub,
) -> None:
    request = registry_pb2.RegisterModelRequest(model=model())
    with pytest.raises(grpc.aio.AioRpcError) as absent:
        await guarded.RegisterModel(request)
    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await guarded.RegisterModel(request, metadata=bearer_metadata("guess"))
    with pytest.raises(grpc.aio.AioRpcError) as not_bearer:
        await guarded.RegisterModel(request, metadata=(("authorization", "Basic s3cret"),))
    for rpc in (
        guarded.SetStage(registry_pb2.SetStageRequest(name="smollm2", version="1")),
        guarded.DeleteModel(registry_pb2.DeleteModelRequest(name="smollm2", version="1")),
        guarded.PutRoute(registry_pb2.PutRouteRequest(route=model_pb2.Route(name="r"))),
        guarded.DeleteRoute(registry_pb2.DeleteRouteRequest(name="r")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await rpc
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED

    assert absent.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "admin token" in (absent.value.details() or "")
    assert wrong.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert not_bearer.value.code() == grpc.StatusCode.UNAUTHENTICATED

    ok = await guarded.RegisterModel(request, metadata=bearer_metadata("s3cret"))
    assert ok.created
    listed = await guarded.ListModels(registry_pb2.ListModelsRequest())
    assert len(listed.models) == 1
    assert (await guarded.GetModel(registry_pb2.GetModelRequest(name="smollm2"))).model


async def test_a_stopped_registry_leaves_no_watch_behind(tmp_path: Path) -> None:
    # A Watch cancelled by the server's stop may be in a database read: its connection
    # closes in a task of its own. Closing the store waits for it; before, the engine was
    # disposed under it and the loop's shutdown then hung (about one run in five).
    for attempt in range(10):
        store = await open_store(f"sqlite+aiosqlite:///{tmp_path / f'r{attempt}.db'}")
        running = await start_server(
            "127.0.0.1:0", functools.partial(add_to_server, store), [SERVICE_NAME]
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as chan:
            stub = cast(
                "registry_pb2_grpc.RegistryServiceAsyncStub",
                registry_pb2_grpc.RegistryServiceStub(chan),
            )
            await stub.RegisterModel(registry_pb2.RegisterModelRequest(model=model("1")))
            call = stub.Watch(registry_pb2.WatchRequest())
            await asyncio.wait_for(call.read(), 10)
            await stub.RegisterModel(registry_pb2.RegisterModelRequest(model=model("2")))
            await asyncio.wait_for(call.read(), 10)
            call.cancel()
        await running.stop(0)
        await store.close()
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not left, f"attempt {attempt}: {left}"
