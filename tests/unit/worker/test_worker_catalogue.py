"""The registry decides what a worker runs: a request names `name@version`, and the worker
loads the registry's record of it, or nothing. Real registry and worker servers in
process; the worker's artifact store records every fetch it is asked for."""

from __future__ import annotations

import asyncio
import functools
import http.server
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from modelyard.bearer import bearer_metadata
from modelyard.local_mesh import free_port
from modelyard.refs import model_key
from modelyard.server import RunningServer, start_server
from modelyard.v1 import common_pb2, model_pb2, worker_pb2, worker_pb2_grpc
from registry.auth import SERVICE_NAME as REGISTRY_SERVICE_NAME
from registry.service import add_to_server
from registry.store import RegistryStore, open_store
from tests.fixtures.tiny_gguf import gguf_model
from tests.worker_events import collect
from worker.artifacts import ArtifactStore
from worker.catalogue.build import registry_catalogue
from worker.catalogue.registry import RegistryCatalogue
from worker.config import WorkerSettings
from worker.main import RunningWorker, start_worker

ADMIN = "admin-secret"


class RecordingStore(ArtifactStore):
    """The real store, remembering every artifact it was asked to fetch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fetched: list[str] = []

    async def fetch(self, artifact: model_pb2.Artifact, **kwargs: Any) -> Path:
        self.fetched.append(artifact.uri)
        return await super().fetch(artifact, **kwargs)


@dataclass
class Registry:
    store: RegistryStore
    server: RunningServer
    address: str

    async def stop(self) -> None:
        await self.server.stop(0)


@dataclass
class Mesh:
    registry: Registry
    worker: RunningWorker
    store: RecordingStore
    channel: grpc.aio.Channel
    hits: list[str] = field(default_factory=list)

    @property
    def stub(self) -> Any:
        return worker_pb2_grpc.WorkerServiceStub(self.channel)


@pytest.fixture
def http_hits() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server that records every request it gets: (base URL, paths)."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"GGUF")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


@pytest.fixture
async def mesh(tmp_path: Path, settings: WorkerSettings) -> AsyncIterator[Mesh]:
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    server = await start_server(
        "127.0.0.1:0", functools.partial(add_to_server, store), [REGISTRY_SERVICE_NAME]
    )
    registry = Registry(store, server, f"127.0.0.1:{server.port}")
    worker_settings = settings.model_copy(
        update={
            "admin_token": ADMIN,
            "registry_address": registry.address,
            "registry_timeout_s": 1.0,
            "artifacts": settings.artifacts.model_copy(update={"cache_dir": tmp_path / "cache"}),
        }
    )
    recording = RecordingStore(worker_settings.artifacts)
    worker = await start_worker(worker_settings, store=recording)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}")
    try:
        yield Mesh(registry, worker, recording, channel)
    finally:
        await channel.close()
        await worker.stop(0)
        await server.stop(0)
        await store.close()


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def request(model: model_pb2.Model, **fields: Any) -> worker_pb2.WorkerServiceGenerateRequest:
    return worker_pb2.WorkerServiceGenerateRequest(
        model=model,
        prompt="Hello",
        sampling=common_pb2.SamplingParams(max_tokens=2, temperature=0.0),
        load_if_cold=True,
        **fields,
    )


async def generate(mesh: Mesh, req: worker_pb2.WorkerServiceGenerateRequest) -> list[Any]:
    return await collect(mesh.stub.Generate(req, timeout=30))


async def refusal(mesh: Mesh, req: worker_pb2.WorkerServiceGenerateRequest) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generate(mesh, req)
    return caught.value.code()


def hostile(name: str, uri: str) -> model_pb2.Model:
    """What a caller might send: its own artifact, no digest, a budget it cannot exceed."""
    model = model_pb2.Model(name=name, version="1", artifact=model_pb2.Artifact(uri=uri))
    model.resources.memory_bytes = 1
    model.load_options.max_parallel_sequences = 10_000
    model.load_options.extra.update({"trust_remote_code": "true", "sha256": "../../e"})
    return model


async def test_an_unregistered_file_uri_is_refused_and_nothing_is_read(mesh: Mesh) -> None:
    code = await refusal(mesh, request(hostile("probe", "file:///etc/hostname")))

    assert code == grpc.StatusCode.NOT_FOUND
    assert mesh.store.fetched == []
    assert mesh.worker.manager.get(model_key("probe", "1")) is None


async def test_an_unregistered_http_uri_is_refused_and_never_requested(
    mesh: Mesh, http_hits: tuple[str, list[str]]
) -> None:
    base, hits = http_hits
    code = await refusal(mesh, request(hostile("probe", f"{base}/m.gguf")))

    assert code == grpc.StatusCode.NOT_FOUND
    assert hits == [] and mesh.store.fetched == []


async def test_a_registered_model_loads_the_registrys_record_not_the_requests(
    mesh: Mesh, tiny_gguf: Path
) -> None:
    registered = gguf_model(tiny_gguf, name="tiny")
    await mesh.registry.store.register(registered)
    copy = hostile("tiny", "file:///etc/hostname")
    copy.artifact.sha256 = "00" * 32

    events = await generate(mesh, request(copy))

    assert events[0].started.cold_start and events[-1].HasField("finished")
    assert mesh.store.fetched == [registered.artifact.uri]
    resident = mesh.worker.manager.get(model_key("tiny", "1"))
    assert resident is not None
    assert resident.model.artifact == registered.artifact
    assert resident.model.resources.memory_bytes == 0  # the registry's (none), not 1
    assert resident.info is not None  # the engine's batch, not the request copy's 10,000
    assert resident.queue._slots == resident.info.max_sequences < 10_000


async def test_load_model_names_a_version_and_loads_the_registrys_record(
    mesh: Mesh, tiny_gguf: Path
) -> None:
    registered = gguf_model(tiny_gguf, name="tiny")
    await mesh.registry.store.register(registered)

    reply = await mesh.stub.LoadModel(
        worker_pb2.LoadModelRequest(model=hostile("tiny", "file:///etc/hostname")),
        metadata=bearer_metadata(ADMIN),
        timeout=30,
    )

    assert reply.loaded and mesh.store.fetched == [registered.artifact.uri]


async def test_an_archived_version_is_refused_before_any_fetch(mesh: Mesh, tiny_gguf: Path) -> None:
    await mesh.registry.store.register(gguf_model(tiny_gguf, name="old"))
    await mesh.registry.store.set_stage("old", "1", model_pb2.STAGE_ARCHIVED)
    # Stages change, so a worker knows one as soon as its Watch brings it: wait for that
    # (asking earlier may race the change and find the version still live).
    catalogue = mesh.worker.catalogue
    assert isinstance(catalogue, RegistryCatalogue)

    def archived() -> bool:
        seen = catalogue.cache.model("old", "1")
        return seen is not None and seen.stage == model_pb2.STAGE_ARCHIVED

    await until(archived)

    code = await refusal(mesh, request(gguf_model(tiny_gguf, name="old")))

    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert mesh.store.fetched == []


async def test_known_models_keep_serving_while_the_registry_is_down(
    mesh: Mesh, tiny_gguf: Path
) -> None:
    registered = gguf_model(tiny_gguf, name="tiny")
    await mesh.registry.store.register(registered)
    await generate(mesh, request(model_pb2.Model(name="tiny", version="1")))
    await mesh.registry.stop()

    served = await generate(mesh, request(model_pb2.Model(name="tiny", version="1")))
    unknown = await refusal(mesh, request(hostile("probe", "file:///etc/hostname")))

    assert served[-1].HasField("finished")
    assert unknown == grpc.StatusCode.UNAVAILABLE  # cannot ask, so nothing is loaded
    assert mesh.store.fetched == [registered.artifact.uri]


async def test_a_registry_that_starts_after_the_worker_resolves_the_first_load(
    tmp_path: Path, settings: WorkerSettings, tiny_gguf: Path
) -> None:
    # `modelyard up` starts the registry and its workers side by side: the worker's first
    # connection fails and backs off, and a load asked for in that backoff must wait for
    # the registry (within the timeout), not fail fast as unreachable.
    address = f"127.0.0.1:{free_port()}"
    catalogue = registry_catalogue(settings.model_copy(update={"registry_timeout_s": 5.0}), address)
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    try:
        await asyncio.sleep(0.3)  # the Watch has tried and failed: the channel backs off
        server = await start_server(
            address, functools.partial(add_to_server, store), [REGISTRY_SERVICE_NAME]
        )
        try:
            await store.register(gguf_model(tiny_gguf, name="tiny"))
            resolved = await catalogue.resolve(model_key("tiny", "1"))
        finally:
            await server.stop(0)
    finally:
        await catalogue.close()
        await store.close()

    assert resolved.name == "tiny"


async def test_the_watch_is_back_within_seconds_of_a_long_registry_outage(
    tmp_path: Path, settings: WorkerSettings
) -> None:
    # gRPC's own reconnect backoff grows to 120 s: after a 30 s outage its next attempt
    # would come 8 to 18 s after the registry is back, and the worker would not see new
    # models until then. The worker's channel caps that backoff at 2 s.
    address = f"127.0.0.1:{free_port()}"
    catalogue = registry_catalogue(settings, address)
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    try:
        await asyncio.sleep(30)
        assert not catalogue.cache.synced.is_set()
        server = await start_server(
            address, functools.partial(add_to_server, store), [REGISTRY_SERVICE_NAME]
        )
        try:
            back = time.monotonic()
            await asyncio.wait_for(catalogue.cache.synced.wait(), timeout=20)
            waited = time.monotonic() - back
        finally:
            await server.stop(0)
    finally:
        await catalogue.close()
        await store.close()

    assert waited < 6.0, f"the Watch reconnected {waited:.1f} s after the registry was back"
