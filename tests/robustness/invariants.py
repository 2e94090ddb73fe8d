"""What every fuzz case and every overload run must keep true, in one place."""

from __future__ import annotations

import re

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelyard.bearer import bearer_metadata
from modelyard.v1 import common_pb2, router_pb2, router_pb2_grpc
from tests.robustness.sim_mesh import CLIENT_KEY, SimMesh

MB = 1 << 20
# Measured after a full fuzz run on a loaded 2-core machine: registry ~130 MB, worker
# and router ~100-110 MB. The bound leaves room for allocator noise, not for a leak
# that grows with the number of requests.
RSS_BOUND = {"registry": 300 * MB, "worker-0": 300 * MB, "router": 300 * MB}

# What an error text must never carry: a traceback, a Python exception's repr, source or
# library paths, SQL, the mesh's own directories.
_LEAKS = re.compile(
    r"Traceback|File \"|\.py\b|site-packages|sqlalchemy|aiosqlite|SELECT |INSERT |"
    r"\b(Key|Value|Type|Attribute|Index|Runtime|Assertion|Unicode\w*|Overflow|Recursion)Error\b|"
    r"/tmp/|/work/|/home/|/root/|object at 0x"
)


def leaks(text: str, sent: str = "") -> list[str]:
    """The forbidden fragments in `text` that did not come from the client's own input
    (`sent`: an error may quote what the client sent)."""
    return sorted({m.group(0) for m in _LEAKS.finditer(text) if m.group(0) not in sent})


def mesh_trouble(mesh: SimMesh) -> list[str]:
    """Why the mesh is not well: exited processes, RSS over its bound, a failing health
    check, a router that no longer serves. Empty when all is well."""
    trouble = [f"{name} exited" for name in mesh.alive()]
    if trouble:
        return trouble
    for name, rss in mesh.rss().items():
        if rss > RSS_BOUND[name]:
            trouble.append(f"{name} RSS {rss / MB:.0f} MB > {RSS_BOUND[name] / MB:.0f} MB")
    for service in mesh.local.services:
        with grpc.insecure_channel(service.address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=10
                )
            except grpc.RpcError as err:
                trouble.append(f"{service.name} health: {err.code()}")
                continue
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                trouble.append(f"{service.name} health: {reply.status}")
    trouble += _serves(mesh)
    return trouble


def _serves(mesh: SimMesh) -> list[str]:
    request = router_pb2.CompleteRequest(
        model=mesh.model.name,
        prompt="still there?",
        sampling=common_pb2.SamplingParams(max_tokens=4),
    )
    with grpc.insecure_channel(mesh.local.router_address) as channel:
        try:
            reply = router_pb2_grpc.RouterServiceStub(channel).Complete(
                request, timeout=30, metadata=bearer_metadata(CLIENT_KEY)
            )
        except grpc.RpcError as err:
            return [f"router does not serve: {err.code()} {err.details()}"]
    if reply.finished.usage.output_tokens != 4:
        return [f"router served {reply.finished.usage.output_tokens} tokens, not 4"]
    return []
