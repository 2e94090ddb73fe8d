"""The front's HTTP surface beyond translation, against a fake router called in process:
usage with cached prompt tokens (whole and streamed, `include_usage`), the header listing
ignored parameters, /health and /metrics and their auth decision."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

import httpx2 as httpx
import openai
import pytest_asyncio
from prometheus_client import CollectorRegistry, Counter

from modelyard.local_mesh import free_port
from modelyard.v1 import common_pb2, router_pb2
from router.openai.app import IGNORED_HEADER, build_app
from router.openai.server import start_http_front

KEY = "key-1"
AUTH = {"authorization": f"Bearer {KEY}"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class _CachingRouter:
    """Streams "Hel" "lo"; its usage says 3 of the 5 prompt tokens came from the cache."""

    async def _events(self) -> AsyncGenerator[router_pb2.GenerateResponse, None]:
        yield router_pb2.GenerateResponse(
            started=common_pb2.GenerationStarted(request_id="r1", model="m", version="1")
        )
        for text in ("Hel", "lo"):
            yield router_pb2.GenerateResponse(delta=common_pb2.TokenDelta(text=text))
        yield router_pb2.GenerateResponse(
            finished=common_pb2.GenerationFinished(
                finish_reason=common_pb2.FINISH_REASON_STOP,
                usage=common_pb2.Usage(input_tokens=5, output_tokens=2, cached_input_tokens=3),
            )
        )

    def generate(
        self, request: router_pb2.GenerateRequest, *, timeout_s: float | None
    ) -> AsyncGenerator[router_pb2.GenerateResponse, None]:
        return self._events()

    async def list_models(
        self, *, timeout_s: float | None
    ) -> router_pb2.RouterServiceListModelsResponse:
        return router_pb2.RouterServiceListModelsResponse()


@pytest_asyncio.fixture
async def sdk() -> AsyncIterator[openai.AsyncOpenAI]:
    http = await start_http_front(f"127.0.0.1:{free_port()}", _CachingRouter(), api_keys=[KEY])
    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{http.port}/v1", api_key=KEY, max_retries=0
    )
    try:
        yield client
    finally:
        await client.close()
        await http.stop()


async def test_cached_prompt_tokens_and_the_usage_chunk(sdk: openai.AsyncOpenAI) -> None:
    whole = await sdk.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert whole.usage is not None and whole.usage.prompt_tokens == 5
    assert whole.usage.prompt_tokens_details is not None
    assert whole.usage.prompt_tokens_details.cached_tokens == 3
    legacy = await sdk.completions.create(model="m", prompt="hi")
    assert legacy.usage is not None and legacy.usage.prompt_tokens_details is not None
    assert legacy.usage.prompt_tokens_details.cached_tokens == 3

    stream = await sdk.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    # OpenAI's shape: the text chunks carry no usage; one last chunk has usage and no choices.
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (5, 2)
    assert last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens == 3
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"

    plain = await sdk.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    unasked = [chunk async for chunk in plain]
    assert all(c.usage is None and c.choices for c in unasked)  # no usage chunk unasked


async def _asgi(
    serving: bool = True, ignore_unknown: bool = False
) -> tuple[httpx.AsyncClient, Counter]:
    registry = CollectorRegistry()
    counter = Counter(
        "probe_test_requests", "A counter of the router's registry.", registry=registry
    )
    app = build_app(
        _CachingRouter(),
        api_keys=[KEY],
        ignore_unknown=ignore_unknown,
        serving=lambda: serving,
        metrics=registry,
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://f"), counter


async def test_ignored_parameters_are_listed_in_a_header() -> None:
    client, _ = await _asgi(ignore_unknown=True)
    async with client:
        body = {**CHAT, "guided_whitespace": {}, "odd key\n": 1}
        whole = await client.post("/v1/chat/completions", json=body, headers=AUTH)
        assert whole.status_code == 200, whole.text
        assert whole.headers[IGNORED_HEADER] == "guided_whitespace,odd%20key%0A"
        streamed = await client.post(
            "/v1/chat/completions", json={**body, "stream": True}, headers=AUTH
        )
        assert streamed.headers[IGNORED_HEADER] == "guided_whitespace,odd%20key%0A"
        known = await client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
        assert IGNORED_HEADER not in known.headers
    strict, _ = await _asgi(ignore_unknown=False)
    async with strict:
        refused = await strict.post("/v1/chat/completions", json=body, headers=AUTH)
        assert (
            refused.status_code == 400 and refused.json()["error"]["param"] == "guided_whitespace"
        )


async def test_health_and_metrics_need_no_key_and_say_what_they_should() -> None:
    client, counter = await _asgi()
    counter.inc(7)
    async with client:
        health = await client.get("/health")
        assert (health.status_code, health.json()) == (200, {"status": "serving"})
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        assert "probe_test_requests_total 7.0" in metrics.text
        # The API stays behind the key.
        assert (await client.get("/v1/models")).status_code == 401
    stopping, _ = await _asgi(serving=False)
    async with stopping:
        health = await stopping.get("/health")
        assert (health.status_code, health.json()) == (503, {"status": "not_serving"})
