"""The registry SDK against a real registry process on loopback, over TLS, with an admin
token and a reader token: register -> get -> list -> routes -> watch sees the change,
and refused writes, with the blocking and the asyncio client; settings from the CLI's
environment variables."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from modelyard.errors import AlreadyExists, NotFound, PermissionDenied, Unauthenticated
from modelyard.local_mesh import free_port, spawn_service
from modelyard.registry_client import AsyncRegistryClient, RegistryClient
from modelyard.v1 import model_pb2, registry_pb2
from tests.tls_certs import TestCA

ADMIN = "admin-s3cret"
READER = "reader-s3cret"


@dataclass(frozen=True)
class Registry:
    address: str
    ca_file: str

    def client(self, **kwargs: object) -> RegistryClient:
        return RegistryClient(self.address, tls_ca_file=self.ca_file, **kwargs)  # type: ignore[arg-type]

    def async_client(self, **kwargs: object) -> AsyncRegistryClient:
        return AsyncRegistryClient(self.address, tls_ca_file=self.ca_file, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    data = tmp_path_factory.mktemp("registry-sdk")
    ca = TestCA(data / "tls")
    address = f"127.0.0.1:{free_port()}"
    service = spawn_service(
        "registry",
        [
            "registry",
            "serve",
            "--address",
            address,
            "--database-url",
            f"sqlite+aiosqlite:///{data / 'registry.db'}",
        ],
        address,
        data / "registry.log",
        env={
            "MODELYARD_REGISTRY_ADMIN_TOKEN": ADMIN,
            "MODELYARD_REGISTRY_READER_TOKENS": READER,
            **ca.env("registry", ca.issue("registry")),
        },
    )
    try:
        service.wait_healthy(60)
        yield Registry(address, str(ca.ca_file))
    finally:
        service.stop()


@pytest.fixture(autouse=True)
def no_cli_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in (
        "MODELYARD_REGISTRY",
        "MODELYARD_ADMIN_TOKEN",
        "MODELYARD_REGISTRY_ADMIN_TOKEN",
        "MODELYARD_REGISTRY_TOKEN",
        "MODELYARD_TLS_CA_FILE",
        "MODELYARD_TLS_CERT_FILE",
        "MODELYARD_TLS_KEY_FILE",
        "MODELYARD_TLS_SERVER_NAME",
    ):
        monkeypatch.delenv(variable, raising=False)


def model(name: str, version: str = "1") -> model_pb2.Model:
    return model_pb2.Model(
        name=name,
        version=version,
        artifact=model_pb2.Artifact(uri=f"file:///models/{name}.gguf", sha256="ab" * 32),
        capabilities=model_pb2.Capabilities(chat=True, tags=["small"]),
        labels={"team": "search"},
    )


def route(name: str, *models: str) -> model_pb2.Route:
    arms = [model_pb2.RouteArm(name=f"arm{i}", model=m, weight=1) for i, m in enumerate(models)]
    return model_pb2.Route(name=name, arms=arms)


def test_catalogue_round_trip_and_watch(registry: Registry) -> None:
    with registry.client(admin_token=ADMIN) as admin:
        registered = admin.register_model(model("sync-smol"))
        assert registered.created and registered.model.stage == model_pb2.STAGE_STAGING
        again = admin.register_model(model("sync-smol"))
        assert not again.created and again.revision == registered.revision
        other = model("sync-smol")
        other.artifact.uri = "file:///elsewhere.gguf"
        with pytest.raises(AlreadyExists):
            admin.register_model(other)
        admin.register_model(model("sync-smol", "2"))
        staged = admin.set_stage("sync-smol", "1", model_pb2.STAGE_PRODUCTION)
        assert staged.stage == model_pb2.STAGE_PRODUCTION

        assert admin.get_model("sync-smol@2").version == "2"
        assert admin.get_model("sync-smol").version == "1"  # the newest production version
        with pytest.raises(NotFound):
            admin.get_model("sync-smol", "9")
        listed = admin.list_models(name="sync-smol", label_selector="team=search")
        assert [m.version for m in listed] == ["2", "1"]
        production = admin.list_models(name="sync-smol", stage=model_pb2.STAGE_PRODUCTION)
        assert [m.version for m in production] == ["1"]

        with admin.watch(since_revision=registered.revision) as events:
            changes = iter(events)
            seen = [next(changes).change.revision for _ in range(2)]  # version 2, the stage
            put = admin.put_route(route("sync-chat", "sync-smol@1", "sync-smol@2"))
            change = next(changes).change
        assert seen == [registered.revision + 1, registered.revision + 2]
        assert change.kind == registry_pb2.CHANGE_KIND_ROUTE_PUT
        assert change.revision == put.revision and change.route.name == "sync-chat"

        assert [a.model for a in admin.get_route("sync-chat").arms] == [
            "sync-smol@1",
            "sync-smol@2",
        ]
        assert "sync-chat" in [r.name for r in admin.list_routes()]
        snapshot = next(iter(admin.watch(timeout_s=10))).snapshot
        assert snapshot.revision >= put.revision
        assert "sync-chat" in [r.name for r in snapshot.routes]

        assert admin.delete_route("sync-chat") > put.revision
        with pytest.raises(NotFound):
            admin.get_route("sync-chat")
        admin.delete_model("sync-smol", "2")
        assert [m.version for m in admin.list_models(name="sync-smol")] == ["1"]


def test_writes_need_the_admin_token(registry: Registry) -> None:
    with registry.client(registry_token=READER) as reader:
        with pytest.raises(Unauthenticated):
            reader.register_model(model("refused"))
        with pytest.raises(Unauthenticated):
            reader.put_route(route("refused", "refused@1"))
        assert reader.list_models(name="refused") == []  # reads pass with the reader token
    with registry.client(admin_token="guess") as wrong, pytest.raises(PermissionDenied):
        wrong.register_model(model("refused"))
    with registry.client() as nobody, pytest.raises(Unauthenticated):
        nobody.list_models()  # the registry has readers: a read needs a token too


def test_the_environment_names_the_registry_and_its_tokens(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELYARD_REGISTRY", registry.address)
    monkeypatch.setenv("MODELYARD_TLS_CA_FILE", registry.ca_file)
    monkeypatch.setenv("MODELYARD_REGISTRY_ADMIN_TOKEN", ADMIN)  # the server's own variable
    with RegistryClient() as client:
        assert client.connection.address == registry.address
        assert client.register_model(model("env-smol")).model.name == "env-smol"
    monkeypatch.setenv("MODELYARD_ADMIN_TOKEN", "guess")  # the CLI's wins over the server's
    monkeypatch.setenv("MODELYARD_REGISTRY_TOKEN", READER)
    with RegistryClient() as client:
        assert client.get_model("env-smol@1").name == "env-smol"  # reads: the reader token
        with pytest.raises(PermissionDenied):
            client.delete_model("env-smol", "1")


async def test_async_round_trip_watch_and_refusal(registry: Registry) -> None:
    async with registry.async_client(admin_token=ADMIN) as admin:
        registered = await admin.register_model(model("async-smol"))
        assert (await admin.get_model("async-smol", "1")).name == "async-smol"
        assert [m.name for m in await admin.list_models(name="async-smol")] == ["async-smol"]

        async with admin.watch(since_revision=registered.revision) as stream:
            events = aiter(stream)
            put = await admin.put_route(route("async-chat", "async-smol@1"))
            change = (await asyncio.wait_for(anext(events), 10)).change
        assert change.kind == registry_pb2.CHANGE_KIND_ROUTE_PUT
        assert change.revision == put.revision
        assert (await admin.get_route("async-chat")).arms[0].model == "async-smol@1"
        assert "async-chat" in [r.name for r in await admin.list_routes()]

        async with admin.watch() as stream:
            async for event in stream:  # a snapshot first; cancelling ends the loop quietly
                assert event.snapshot.revision >= put.revision
                stream.cancel()

    async with registry.async_client(registry_token=READER) as reader:
        with pytest.raises(Unauthenticated):
            await reader.put_route(route("async-chat", "async-smol@1"))
        with pytest.raises(Unauthenticated):
            await reader.delete_model("async-smol", "1")
    async with registry.async_client(admin_token="guess") as wrong:
        with pytest.raises(PermissionDenied):
            await wrong.delete_route("async-chat")


def test_a_cancelled_watch_ends_without_an_error(registry: Registry) -> None:
    with registry.client(registry_token=READER) as reader:
        stream = reader.watch()
        received = []
        for event in stream:
            received.append(event.WhichOneof("event"))
            stream.cancel()
        assert received == ["snapshot"]
