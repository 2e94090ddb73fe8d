"""POST /v1/feedback and GET /v1/stats on the HTTP front, over the router's real stats
operations (this replica's own book: no registry here): the API key is checked first,
bodies and parameters are validated, errors come in OpenAI's shape."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

import httpx2 as httpx
import pytest_asyncio

from modelyard.v1 import common_pb2, router_pb2
from router.openai.app import build_app
from router.outcomes.ops import OutcomeOps
from router.stats import Outcome, RoutingStats

KEY = {"authorization": "Bearer key-1"}  # alice's
BOB = {"authorization": "Bearer key-2"}
OPERATOR = {"authorization": "Bearer ops-1"}


class _NoGeneration:
    def generate(
        self, request: router_pb2.GenerateRequest, *, timeout_s: float | None
    ) -> AsyncGenerator[router_pb2.GenerateResponse, None]:
        raise AssertionError("not used here")

    async def list_models(
        self, *, timeout_s: float | None
    ) -> router_pb2.RouterServiceListModelsResponse:
        return router_pb2.RouterServiceListModelsResponse()


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    stats = RoutingStats()
    usage = common_pb2.Usage(input_tokens=3, output_tokens=2)
    stats.record("req-1", Outcome(model="m", version="1", usage=usage, ttft_ms=5, total_ms=9))
    stats.record("req-bob", Outcome(model="m", version="1", usage=usage, client="bob"))
    app = build_app(
        _NoGeneration(),
        api_keys=["alice:key-1", "bob:key-2"],
        operator_keys=["ops:ops-1"],
        outcomes=OutcomeOps(stats),
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://front") as c:
        yield c


async def test_feedback_and_stats_need_the_api_key(client: httpx.AsyncClient) -> None:
    assert (
        await client.post("/v1/feedback", json={"request_id": "req-1", "score": 1})
    ).status_code == 401
    assert (await client.get("/v1/stats")).status_code == 401


async def test_feedback_then_stats_over_http(client: httpx.AsyncClient) -> None:
    body = {"request_id": "req-1", "score": 0.5, "comment": "good"}
    ok = await client.post("/v1/feedback", json=body, headers=KEY)
    assert ok.status_code == 200 and ok.json()["request_id"] == "req-1"
    again = await client.post("/v1/feedback", json=body, headers=KEY)
    assert again.status_code == 404 and again.json()["error"]["message"]
    for bad in (
        {"request_id": "req-1", "score": "high"},
        {"request_id": "req-1", "score": 1, "comment": "x" * 2049},
        {"request_id": "", "score": 1},
        {"request_id": "req-1", "score": 1, "rating": 5},
    ):
        refused = await client.post("/v1/feedback", json=bad, headers=KEY)
        assert refused.status_code == 400, bad
        assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
    stats = await client.get("/v1/stats", params={"model": "m", "since": "1h"}, headers=OPERATOR)
    assert stats.status_code == 200
    reply = stats.json()
    assert reply["mesh_wide"] is False  # no registry behind this front
    traffic = reply["models"][0]["traffic"]
    assert traffic["requests"] == "2" and traffic["feedback_count"] == "1"
    for params in ({"since": "soon"}, {"since": "0s"}, {"window": "1h"}):
        refused = await client.get("/v1/stats", params=params, headers=OPERATOR)
        assert refused.status_code == 400, params


async def test_stats_are_for_operators_and_feedback_for_the_key_that_asked(
    client: httpx.AsyncClient,
) -> None:
    # A client key is valid but not an operator's: 403, not 401.
    refused = await client.get("/v1/stats", headers=KEY)
    assert refused.status_code == 403
    assert "MODELYARD_ROUTER_OPERATOR_KEYS" in refused.json()["error"]["message"]
    assert (
        await client.get("/v1/stats", headers={"authorization": "Bearer nope"})
    ).status_code == 401
    # Bob's request: alice cannot score it (it looks unknown to her), bob can, once.
    body = {"request_id": "req-bob", "score": -1}
    assert (await client.post("/v1/feedback", json=body, headers=KEY)).status_code == 404
    assert (await client.post("/v1/feedback", json=body, headers=BOB)).status_code == 200
    assert (await client.post("/v1/feedback", json=body, headers=BOB)).status_code == 404
    # An operator may score any request, and call what clients call.
    ok = await client.post(
        "/v1/feedback", json={"request_id": "req-1", "score": 1}, headers=OPERATOR
    )
    assert ok.status_code == 200
