"""Crash safety: kill -9 the registry amid acknowledged writes; nothing acknowledged is lost.

The registry runs as a real process (`python -m modelyard registry serve`);
four client threads register models as fast as they can and record every
acknowledged write. After enough acknowledgements the process is killed with
SIGKILL mid-stream (writes are still in flight), restarted on the same
database, and must return every acknowledged version; SQLite must pass
`PRAGMA integrity_check`. The same runs on PostgreSQL.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from modelyard.local_mesh import ServiceProcess, free_port, spawn_service
from modelyard.v1 import model_pb2, registry_pb2, registry_pb2_grpc
from tests import postgres

pytestmark = pytest.mark.integration

WRITERS = 4
KILL_AFTER = 60  # acknowledged writes before the kill


def start_registry(address: str, database_url: str, log: Path) -> ServiceProcess:
    service = spawn_service(
        "registry",
        ["registry", "serve", "--address", address, "--database-url", database_url],
        address,
        log,
    )
    service.wait_healthy(60)
    return service


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
        return
    server = postgres.server_url()
    url = postgres.create_test_database(server)
    yield url
    postgres.drop_test_database(server, url)


def test_acknowledged_writes_survive_kill_9(database_url: str, tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    service = start_registry(address, database_url, tmp_path / "registry.log")
    acknowledged: list[tuple[str, int]] = []
    lock = threading.Lock()
    enough = threading.Event()

    def write(writer: int) -> None:
        with grpc.insecure_channel(address) as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            for i in range(10_000):
                model = model_pb2.Model(
                    name=f"crash-{writer}",
                    version=str(i),
                    artifact=model_pb2.Artifact(
                        uri=f"file:///m/{writer}/{i}.gguf", sha256="ab" * 32
                    ),
                    labels={"writer": str(writer)},
                )
                try:
                    reply = stub.RegisterModel(
                        registry_pb2.RegisterModelRequest(model=model), timeout=10
                    )
                except grpc.RpcError:
                    return  # the server is gone: this write was never acknowledged
                with lock:
                    acknowledged.append((f"crash-{writer}@{i}", reply.revision))
                    if len(acknowledged) >= KILL_AFTER:
                        enough.set()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(WRITERS)]
    for thread in threads:
        thread.start()
    try:
        assert enough.wait(60), f"too few writes acknowledged: {service.log_tail()}"
        service.process.kill()  # SIGKILL: no graceful stop, no flush
        service.process.wait(10)
    finally:
        for thread in threads:
            thread.join(30)
        service.stop()

    restarted = start_registry(address, database_url, tmp_path / "registry-2.log")
    try:
        with grpc.insecure_channel(address) as channel:
            stub = registry_pb2_grpc.RegistryServiceStub(channel)
            stored: dict[str, int] = {}
            token = ""
            while True:
                page = stub.ListModels(
                    registry_pb2.ListModelsRequest(page_size=1000, page_token=token), timeout=10
                )
                stored.update({f"{m.name}@{m.version}": 1 for m in page.models})
                token = page.next_page_token
                if not token:
                    break
            revision = page.revision
    finally:
        restarted.stop()

    missing = [ref for ref, _ in acknowledged if ref not in stored]
    assert not missing, f"acknowledged but lost after kill -9: {missing}"
    assert len(acknowledged) >= KILL_AFTER
    # Every stored version is one revision; none acknowledged beyond what was stored.
    assert revision == len(stored) >= max(r for _, r in acknowledged)
    if database_url.startswith("sqlite"):
        path = database_url.removeprefix("sqlite+aiosqlite:///")
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
