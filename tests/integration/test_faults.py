"""Cancellation, dead workers and deadlines, through real processes."""

from __future__ import annotations

import time

import grpc
import pytest

from modelyard.local_mesh import LocalMesh, free_port, spawn_service
from modelyard.v1 import (
    common_pb2,
    model_pb2,
    router_pb2,
    router_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)


class _WorkerProbe:
    """One open channel to a worker's status, so polling costs no reconnects."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.insecure_channel(address)
        self._stub = worker_pb2_grpc.WorkerServiceStub(self._channel)

    def status(self) -> worker_pb2.WorkerStatus:
        reply: worker_pb2.GetStatusResponse = self._stub.GetStatus(
            worker_pb2.GetStatusRequest(), timeout=5
        )
        return reply.status

    def generated_total(self) -> int:
        return sum(m.generated_tokens_total for m in self.status().models)

    def close(self) -> None:
        self._channel.close()


def test_cancelling_the_client_stops_decoding_on_the_worker(
    router_channel: grpc.Channel, mesh: LocalMesh, smollm2: model_pb2.Model
) -> None:
    stub = router_pb2_grpc.RouterServiceStub(router_channel)
    call = stub.Generate(
        router_pb2.GenerateRequest(
            model=smollm2.name,
            messages=[
                common_pb2.ChatMessage(role="system", content="You are a helpful assistant."),
                common_pb2.ChatMessage(role="user", content="Write a long story about a sailor."),
            ],
            sampling=common_pb2.SamplingParams(max_tokens=1000, temperature=0.0),
        ),
        timeout=120,
    )
    deltas = 0
    for event in call:
        if event.WhichOneof("event") == "delta":
            deltas += 1
            if deltas == 5:
                break
    probe = _WorkerProbe(mesh.worker_addresses[0])
    try:
        assert probe.status().running_sequences == 1
        call.cancel()
        cancelled_at = time.monotonic()
        while probe.status().running_sequences != 0:
            assert time.monotonic() - cancelled_at < 1.0, "worker still decoding 1 s after cancel"
            time.sleep(0.02)
        # Decoding really stopped: the worker's token counter no longer moves.
        before = probe.generated_total()
        time.sleep(0.5)
        assert probe.generated_total() == before
    finally:
        probe.close()


def test_deadline_is_honoured_end_to_end(
    router_channel: grpc.Channel, smollm2: model_pb2.Model
) -> None:
    stub = router_pb2_grpc.RouterServiceStub(router_channel)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        list(
            stub.Generate(
                router_pb2.GenerateRequest(
                    model=smollm2.name,
                    messages=[
                        common_pb2.ChatMessage(
                            role="system", content="You are a helpful assistant."
                        ),
                        common_pb2.ChatMessage(role="user", content="Write a long story."),
                    ],
                    sampling=common_pb2.SamplingParams(max_tokens=2000, temperature=0.0),
                ),
                timeout=1.5,
            )
        )
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3.0


def test_worker_down_is_unavailable_naming_the_worker(
    mesh: LocalMesh, smollm2: model_pb2.Model, tmp_path: object
) -> None:
    dead_worker = f"127.0.0.1:{free_port()}"
    router_address = f"127.0.0.1:{free_port()}"
    router = spawn_service(
        "router-dead-worker",
        [
            "router",
            "serve",
            "--address",
            router_address,
            "--registry-address",
            mesh.registry_address,
            "--worker",
            dead_worker,
        ],
        router_address,
        mesh.data_dir / "logs" / "router-dead-worker.log",
    )
    try:
        router.wait_healthy()
        with grpc.insecure_channel(router_address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                list(
                    stub.Generate(
                        router_pb2.GenerateRequest(
                            model=smollm2.name,
                            prompt="Hello",
                            sampling=common_pb2.SamplingParams(max_tokens=4),
                        ),
                        timeout=30,
                    )
                )
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert dead_worker in (info.value.details() or "")
            assert time.monotonic() - started < 15.0
    finally:
        router.stop()
