"""`modelyard feedback` and `modelyard stats --since` as a user runs them, against the
session mesh (its router ships outcomes to its registry: stats are mesh-wide)."""

from __future__ import annotations

import uuid

import grpc
import pytest

from modelyard.local_mesh import LocalMesh
from modelyard.v1 import common_pb2, model_pb2, router_pb2, router_pb2_grpc
from tests.integration.test_cli import modelyard

pytestmark = pytest.mark.integration


def test_feedback_and_stats_since_from_the_cli(mesh: LocalMesh, smollm2: model_pb2.Model) -> None:
    request_id = f"cli-{uuid.uuid4().hex}"
    with grpc.insecure_channel(mesh.router_address) as channel:
        router_pb2_grpc.RouterServiceStub(channel).Complete(
            router_pb2.CompleteRequest(
                model=smollm2.name,
                prompt="Hello",
                request_id=request_id,
                sampling=common_pb2.SamplingParams(max_tokens=2),
            ),
            timeout=120,
        )
    router = ("--router", mesh.router_address)
    done = modelyard("feedback", request_id, "0.9", "--comment", "to the point", *router)
    assert done.returncode == 0, done.stderr
    again = modelyard("feedback", request_id, "0.1", *router)
    assert again.returncode == 1 and "ALREADY_EXISTS" in again.stderr

    table = modelyard("stats", "--since", "1h", *router)
    assert table.returncode == 0, table.stderr
    assert "mesh-wide, last 1h" in table.stdout
    wrong = modelyard("stats", "--since", "an hour", *router)
    assert wrong.returncode == 1 and "INVALID_ARGUMENT" in wrong.stderr
