"""A real mesh for the integration tests: registry, worker and router as separate
processes on loopback, serving the real SmolLM2 model."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from modelyard.bundled import smollm2_model
from modelyard.local_mesh import LocalMesh
from modelyard.v1 import model_pb2, registry_pb2, registry_pb2_grpc


def register(registry_address: str, model: model_pb2.Model) -> None:
    with grpc.insecure_channel(registry_address) as channel:
        registry_pb2_grpc.RegistryServiceStub(channel).RegisterModel(
            registry_pb2.RegisterModelRequest(model=model), timeout=30
        )


@pytest.fixture(scope="session")
def smollm2() -> model_pb2.Model:
    return smollm2_model()


@pytest.fixture(scope="session")
def mesh(tmp_path_factory: pytest.TempPathFactory, smollm2: model_pb2.Model) -> Iterator[LocalMesh]:
    data_dir: Path = tmp_path_factory.mktemp("mesh")
    local = LocalMesh(data_dir=data_dir, worker_threads=2)
    local.start()
    try:
        register(local.registry_address, smollm2)
        yield local
    finally:
        local.stop()


@pytest.fixture
def router_channel(mesh: LocalMesh) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(mesh.router_address) as channel:
        yield channel


def until(predicate: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not in {timeout_s:.0f} s: {what}")
        time.sleep(0.1)
