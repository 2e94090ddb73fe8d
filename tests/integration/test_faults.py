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


# Tokens a worker may still decode between the client's cancel (or deadline) and the
# stop reaching its engine: a count, not a time, so a loaded machine does not change it.
# A worker that ignored the cancel would go on for hundreds (max_tokens is 1000+).
STOP_SLACK_TOKENS = 32


def _story(max_tokens: int) -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        model="smollm2-135m-instruct",
        messages=[
            common_pb2.ChatMessage(role="system", content="You are a helpful assistant."),
            common_pb2.ChatMessage(role="user", content="Write a long story about a sailor."),
        ],
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0),
    )


def _until_idle(probe: _WorkerProbe, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while probe.status().running_sequences != 0:
        assert time.monotonic() < deadline, f"worker still decoding {timeout_s:.0f} s later"
        time.sleep(0.02)


def test_cancelling_the_client_stops_decoding_on_the_worker(
    router_channel: grpc.Channel, mesh: LocalMesh, smollm2: model_pb2.Model
) -> None:
    assert smollm2.name == _story(1).model
    stub = router_pb2_grpc.RouterServiceStub(router_channel)
    call = stub.Generate(_story(1000), timeout=120)
    deltas = 0
    for event in call:
        if event.WhichOneof("event") == "delta":
            deltas += 1
            if deltas == 5:
                break
    probe = _WorkerProbe(mesh.worker_addresses[0])
    try:
        assert probe.status().running_sequences == 1
        at_cancel = probe.generated_total()
        call.cancel()
        _until_idle(probe)
        stopped_at = probe.generated_total()
        assert stopped_at - at_cancel <= STOP_SLACK_TOKENS, (at_cancel, stopped_at)
        # Decoding really stopped: the worker's token counter no longer moves.
        time.sleep(0.5)
        assert probe.generated_total() == stopped_at
    finally:
        probe.close()


def test_deadline_is_honoured_end_to_end(
    router_channel: grpc.Channel, mesh: LocalMesh, smollm2: model_pb2.Model
) -> None:
    stub = router_pb2_grpc.RouterServiceStub(router_channel)
    probe = _WorkerProbe(mesh.worker_addresses[0])
    try:
        # Warm: the deadline must fall while decoding, not while the model loads.
        stub.Complete(
            router_pb2.CompleteRequest.FromString(_story(1).SerializeToString()), timeout=120
        )
        call = stub.Generate(_story(2000), timeout=3.0)
        with pytest.raises(grpc.RpcError) as info:
            for _ in call:
                pass
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The deadline reached the worker: it stops decoding rather than finishing the story
        # (the client's own deadline alone would end the call whatever the worker does).
        at_deadline = probe.generated_total()
        _until_idle(probe)
        assert probe.generated_total() - at_deadline <= STOP_SLACK_TOKENS
    finally:
        probe.close()


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
            # UNAVAILABLE, not DEADLINE_EXCEEDED: the router gave up on the dead worker
            # at once instead of waiting out the client's 30 s.
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert dead_worker in (info.value.details() or "")
    finally:
        router.stop()
