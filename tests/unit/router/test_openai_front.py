"""The OpenAI front's error shapes and request translation, against a fake RouterService
served over gRPC in this process and called with the official `openai` SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import openai
import pytest
import pytest_asyncio

from modelyard.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ModelyardError,
    ResourceExhausted,
    Unavailable,
    grpc_errors,
)
from modelyard.local_mesh import free_port
from modelyard.server import RunningServer, start_server
from modelyard.v1 import router_pb2, router_pb2_grpc
from router.openai import translate
from router.openai.errors import OpenAIError
from router.openai.server import HttpFront, start_http_front


class _FailingRouter(router_pb2_grpc.RouterServiceServicer):
    """Fails every Generate with the error a test sets."""

    error: ModelyardError = Unavailable("no worker could serve m@1", reason="NO_WORKERS")
    seen: list[router_pb2.GenerateRequest]

    def __init__(self) -> None:
        self.seen = []

    @grpc_errors
    async def Generate(
        self, request: router_pb2.GenerateRequest, context: Any
    ) -> AsyncIterator[router_pb2.GenerateResponse]:
        self.seen.append(request)
        raise self.error
        yield router_pb2.GenerateResponse()  # pragma: no cover - makes this a generator


@pytest_asyncio.fixture
async def front() -> AsyncIterator[tuple[_FailingRouter, openai.AsyncOpenAI]]:
    router = _FailingRouter()  # type: ignore[abstract]  # Generate is all it needs
    running: RunningServer = await start_server(
        "127.0.0.1:0",
        lambda server: router_pb2_grpc.add_RouterServiceServicer_to_server(router, server),
        ["modelyard.v1.RouterService"],
    )
    http: HttpFront = await start_http_front(f"127.0.0.1:{free_port()}", running.port)
    port = http.server.servers[0].sockets[0].getsockname()[1]
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
    try:
        yield router, client
    finally:
        await client.close()
        await http.stop()
        await running.server.stop(0)


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
    front: tuple[_FailingRouter, openai.AsyncOpenAI],
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
    front: tuple[_FailingRouter, openai.AsyncOpenAI],
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
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"max_tokens": 0}, "max_completion_tokens"),
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
    request = translate.chat_request({**base, "messages": [parts]})
    assert request.messages[0].content == "ab"
    assert translate.completion_request({"model": "m", "prompt": ["p"]}).sampling.max_tokens == 16


def test_grpc_code_table_is_complete() -> None:
    from router.openai.errors import _BY_CODE

    assert _BY_CODE[grpc.StatusCode.NOT_FOUND][0] == 404
