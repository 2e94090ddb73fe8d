"""The OpenAI front's error shapes, request translation and API keys, against a fake
router called in process (as the real front calls the relay), through the official
`openai` SDK over a real HTTP port, or httpx straight into the ASGI app."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
import httpx2 as httpx
import openai
import pytest
import pytest_asyncio

from modelyard.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ModelyardError,
    ResourceExhausted,
    Unavailable,
)
from modelyard.local_mesh import free_port
from modelyard.v1 import common_pb2, router_pb2
from router.openai import translate
from router.openai.app import build_app
from router.openai.errors import OpenAIError
from router.openai.server import start_http_front


class _FakeRouter:
    """Fails every generation with `error`, or, with `error` None, streams "Hello"."""

    def __init__(self) -> None:
        self.error: ModelyardError | None = Unavailable("no worker could serve m@1")
        self.seen: list[router_pb2.GenerateRequest] = []

    def generate(
        self, request: router_pb2.GenerateRequest, *, timeout_s: float | None
    ) -> AsyncGenerator[router_pb2.GenerateResponse, None]:
        self.seen.append(request)
        return self._events()

    async def _events(self) -> AsyncGenerator[router_pb2.GenerateResponse, None]:
        if self.error is not None:
            raise self.error
        yield router_pb2.GenerateResponse(
            started=common_pb2.GenerationStarted(request_id="r1", model="m", version="1")
        )
        yield router_pb2.GenerateResponse(delta=common_pb2.TokenDelta(text="Hello"))
        yield router_pb2.GenerateResponse(
            finished=common_pb2.GenerationFinished(
                finish_reason=common_pb2.FINISH_REASON_STOP,
                usage=common_pb2.Usage(input_tokens=2, output_tokens=1),
            )
        )

    async def list_models(
        self, *, timeout_s: float | None
    ) -> router_pb2.RouterServiceListModelsResponse:
        return router_pb2.RouterServiceListModelsResponse()


@pytest_asyncio.fixture
async def front() -> AsyncIterator[tuple[_FakeRouter, openai.AsyncOpenAI]]:
    router = _FakeRouter()
    http = await start_http_front(f"127.0.0.1:{free_port()}", router)
    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{http.port}/v1", api_key="x", max_retries=0
    )
    try:
        yield router, client
    finally:
        await client.close()
        await http.stop()


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (Unavailable("no worker", reason="NO_WORKERS"), 503, "service_unavailable"),
        (ResourceExhausted("queue full", retry_after_s=2.0), 429, "rate_limit_exceeded"),
        (DeadlineExceeded("deadline passed"), 504, "timeout"),
        (InvalidArgument.for_field("sampling.top_p", "must be in (0, 1]"), 400, "invalid_value"),
    ],
)
async def test_router_errors_map_to_http_status_and_openai_shape(
    front: tuple[_FakeRouter, openai.AsyncOpenAI],
    error: ModelyardError,
    status: int,
    code: str,
) -> None:
    router, client = front
    router.error = error
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=stream
            )
        assert caught.value.status_code == status
        body = caught.value.body
        assert isinstance(body, dict) and body["code"] == code
        assert set(body) == {"message", "type", "param", "code"}
    if status == 429:
        assert caught.value.response.headers["retry-after"] == "2"
    if status == 400:
        assert isinstance(body, dict) and body["param"] == "top_p"


async def test_request_fields_reach_the_router(
    front: tuple[_FakeRouter, openai.AsyncOpenAI],
) -> None:
    router, client = front
    with pytest.raises(openai.APIStatusError):
        await client.completions.create(
            model="m@2",
            prompt="hello",
            max_tokens=7,
            temperature=0.5,
            top_p=0.9,
            stop=["\n"],
            seed=3,
            user="alice",
        )
    sent = router.seen[-1]
    assert (sent.model, sent.prompt) == ("m@2", "hello")
    assert sent.sampling.max_tokens == 7 and sent.sampling.seed == 3
    assert sent.sampling.temperature == pytest.approx(0.5)
    assert list(sent.sampling.stop) == ["\n"]
    assert sent.hints.session_key == "alice"


def test_translation_rejects_what_it_cannot_honour() -> None:
    base: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"n": 9}, "n"),
        ({"best_of": 2}, "best_of"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": 3}, "stop"),
    ]
    for extra, param in cases:
        with pytest.raises(OpenAIError) as caught:
            translate.chat_request({**base, **extra})
        assert caught.value.status == 400 and caught.value.param == param
    parts = {
        "role": "user",
        "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
    }
    request = translate.chat_request({**base, "messages": [parts]}).request
    assert request.messages[0].content == "ab"
    legacy = translate.completion_request({"model": "m", "prompt": ["p"]}).request
    assert legacy.sampling.max_tokens == 16


def test_grpc_code_table_is_complete() -> None:
    from router.openai.errors import _BY_CODE

    assert _BY_CODE[grpc.StatusCode.NOT_FOUND][0] == 404


# --- API keys: checked by the front itself, before it reads the body -------------------


@pytest_asyncio.fixture
async def keyed() -> AsyncIterator[tuple[_FakeRouter, httpx.AsyncClient]]:
    router = _FakeRouter()
    router.error = None
    app = build_app(router, api_keys=["key-1", "key-2"])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://front") as client:
        yield router, client


CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, None),
        ({"authorization": "Bearer wrong"}, "invalid_api_key"),
        ({"authorization": "Basic key-1"}, None),  # not a bearer token: no key sent
    ],
    ids=["no-key", "wrong-key", "not-bearer"],
)
async def test_requests_without_a_valid_key_are_401_and_reach_no_router(
    keyed: tuple[_FakeRouter, httpx.AsyncClient], headers: dict[str, str], code: str | None
) -> None:
    router, client = keyed
    for method, path, body in [
        ("POST", "/v1/chat/completions", CHAT),
        ("POST", "/v1/completions", {"model": "m", "prompt": "hi"}),
        ("GET", "/v1/models", None),
    ]:
        reply = await client.request(method, path, json=body, headers=headers)
        assert reply.status_code == 401, (path, reply.text)
        error = reply.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["type"], error["code"]) == ("invalid_request_error", code)
        assert reply.headers["www-authenticate"] == "Bearer"
    assert router.seen == []


async def test_the_key_is_checked_before_the_body_is_read(
    keyed: tuple[_FakeRouter, httpx.AsyncClient],
) -> None:
    _, client = keyed
    # Not JSON: a front that parsed the body first would answer 400.
    reply = await client.post("/v1/chat/completions", content=b"{not json")

    assert reply.status_code == 401


async def test_a_valid_key_is_served(keyed: tuple[_FakeRouter, httpx.AsyncClient]) -> None:
    router, client = keyed
    for key in ("key-1", "key-2"):
        reply = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"}
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == "Hello"
    models = await client.get("/v1/models", headers={"authorization": "Bearer key-1"})
    assert models.status_code == 200 and models.json() == {"object": "list", "data": []}
    assert len(router.seen) == 2
