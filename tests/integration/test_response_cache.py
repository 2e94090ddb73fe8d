"""The response cache on the session mesh: real registry, router and llama.cpp worker
processes serving SmolLM2. The worker's own status (tokens it generated) shows that a
cached answer never reached it."""

from __future__ import annotations

import grpc

from modelyard.local_mesh import LocalMesh
from modelyard.refs import key_of
from modelyard.v1 import (
    common_pb2,
    model_pb2,
    registry_pb2,
    registry_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)
from tests.integration.conftest import until

ROUTE = "cached-answers"


def _generated_tokens(mesh: LocalMesh) -> int:
    with grpc.insecure_channel(mesh.worker_addresses[0]) as channel:
        reply = worker_pb2_grpc.WorkerServiceStub(channel).GetStatus(
            worker_pb2.GetStatusRequest(), timeout=10
        )
    return sum(m.generated_tokens_total for m in reply.status.models)


def test_a_repeated_greedy_request_never_reaches_the_worker(
    mesh: LocalMesh, smollm2: model_pb2.Model, router_channel: grpc.Channel
) -> None:
    route = model_pb2.Route(
        name=ROUTE,
        arms=[model_pb2.RouteArm(name="only", model=key_of(smollm2), weight=1)],
        response_cache=model_pb2.ResponseCachePolicy(enabled=True, ttl_seconds=600),
    )
    with grpc.insecure_channel(mesh.registry_address) as channel:
        registry_pb2_grpc.RegistryServiceStub(channel).PutRoute(
            registry_pb2.PutRouteRequest(route=route), timeout=30
        )
    stub = router_pb2_grpc.RouterServiceStub(router_channel)
    listing = router_pb2.RouterServiceListModelsRequest()
    until(
        lambda: ROUTE in [r.name for r in stub.ListModels(listing, timeout=10).routes],
        "the router follows the new route",
    )
    request = router_pb2.GenerateRequest(
        model=ROUTE,
        prompt="The capital of France is",
        sampling=common_pb2.SamplingParams(max_tokens=6, temperature=0),
    )

    first = list(stub.Generate(request, timeout=120))
    before = _generated_tokens(mesh)
    second = list(stub.Generate(request, timeout=120))
    whole = stub.Complete(router_pb2.CompleteRequest.FromString(request.SerializeToString()))
    after = _generated_tokens(mesh)

    assert after == before  # neither the stream nor the unary call reached the worker
    assert not first[-1].finished.cached
    assert second[-1].finished.cached and whole.finished.cached
    text = "".join(e.delta.text for e in first if e.WhichOneof("event") == "delta")
    assert text and "".join(e.delta.text for e in second[1:-1]) == text == whole.text
    assert second[-1].finished.usage == first[-1].finished.usage
    assert (second[0].started.attempt, second[0].started.worker_id) == (0, "")
