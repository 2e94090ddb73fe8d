"""The OpenAI-compatible HTTP front, through the official `openai` SDK, on a real mesh
(registry, worker, router as processes) serving the real SmolLM2. The router requires an
API key, on gRPC and HTTP alike."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from modelyard.bearer import bearer_metadata
from modelyard.local_mesh import LocalMesh
from modelyard.v1 import (
    common_pb2,
    model_pb2,
    router_pb2,
    router_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)
from tests.integration.conftest import register

pytestmark = pytest.mark.integration

QUESTION = "Name three primary colors."
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]
PROMPT = "The three primary colors are"
API_KEY = "openai-front-test-key"
AUTH = {"authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def http_mesh(
    tmp_path_factory: pytest.TempPathFactory, smollm2: model_pb2.Model
) -> Iterator[tuple[LocalMesh, str]]:
    mesh = LocalMesh(
        data_dir=Path(tmp_path_factory.mktemp("openai-mesh")),
        worker_threads=2,
        router_http_port=0,  # a free port, and start() waits until the front listens
        env={"MODELYARD_ROUTER_API_KEYS": API_KEY},
    )
    mesh.start()
    try:
        register(mesh.registry_address, smollm2)
        yield mesh, f"http://{mesh.router_http_address}/v1"
    finally:
        mesh.stop()


@pytest.fixture(scope="module")
def client(http_mesh: tuple[LocalMesh, str]) -> openai.OpenAI:
    return openai.OpenAI(base_url=http_mesh[1], api_key=API_KEY, max_retries=0, timeout=120)


def _grpc_text(mesh: LocalMesh, request: router_pb2.GenerateRequest) -> str:
    with grpc.insecure_channel(mesh.router_address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        events = list(stub.Generate(request, timeout=120, metadata=bearer_metadata(API_KEY)))
    return "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")


def test_streaming_chat_matches_the_grpc_path(
    http_mesh: tuple[LocalMesh, str], client: openai.OpenAI, smollm2: model_pb2.Model
) -> None:
    mesh, _ = http_mesh
    stream = client.chat.completions.create(
        model=smollm2.name,
        messages=MESSAGES,
        max_tokens=24,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    expected = _grpc_text(
        mesh,
        router_pb2.GenerateRequest(
            model=smollm2.name,
            messages=[common_pb2.ChatMessage(role="user", content=QUESTION)],
            sampling=common_pb2.SamplingParams(max_tokens=24, temperature=0.0),
        ),
    )
    assert text and text == expected
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens <= 24
    assert chunks[0].model == f"{smollm2.name}@{smollm2.version}"
    assert chunks[0].id.startswith("chatcmpl-")


def test_chat_completion_whole(client: openai.OpenAI, smollm2: model_pb2.Model) -> None:
    reply = client.chat.completions.create(
        model=smollm2.name,
        messages=MESSAGES,
        max_tokens=12,
        temperature=0.0,
    )
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_completions_stream_and_whole_agree(
    http_mesh: tuple[LocalMesh, str], client: openai.OpenAI, smollm2: model_pb2.Model
) -> None:
    whole = client.completions.create(
        model=f"{smollm2.name}@{smollm2.version}", prompt=PROMPT, max_tokens=16, temperature=0.0
    )
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=smollm2.name, prompt=PROMPT, max_tokens=16, temperature=0.0, stream=True
        )
        if c.choices
    )
    assert whole.object == "text_completion"
    assert whole.choices[0].text == streamed
    expected = _grpc_text(
        http_mesh[0],
        router_pb2.GenerateRequest(
            model=smollm2.name,
            prompt=PROMPT,
            sampling=common_pb2.SamplingParams(max_tokens=16, temperature=0.0),
        ),
    )
    assert streamed == expected


def test_models_lists_callable_names(client: openai.OpenAI, smollm2: model_pb2.Model) -> None:
    ids = [m.id for m in client.models.list()]
    assert smollm2.name in ids
    assert f"{smollm2.name}@{smollm2.version}" in ids


def test_errors_have_openai_shape(client: openai.OpenAI, http_mesh: tuple[LocalMesh, str]) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert not_found.value.status_code == 404
    body = not_found.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    assert body["code"] == "model_not_found"

    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="x", messages=MESSAGES, n=2)
    assert bad.value.status_code == 400 and isinstance(bad.value.body, dict)
    assert bad.value.body["param"] == "n"

    with pytest.raises(openai.BadRequestError) as bad_sampling:
        client.completions.create(model="x", prompt="hi", temperature=-1.0)
    assert isinstance(bad_sampling.value.body, dict)
    assert bad_sampling.value.body["param"] == "temperature"

    status, reply = _raw(http_mesh[1], "POST", "/chat/completions", b"{not json", AUTH)
    assert status == 400 and reply["error"]["type"] == "invalid_request_error"
    # Every path is behind the key (an unknown one too: nothing is answered before it).
    status, reply = _raw(http_mesh[1], "GET", "/nope")
    assert status == 401
    status, reply = _raw(http_mesh[1], "GET", "/nope", None, AUTH)
    assert status == 404 and set(reply["error"]) == {"message", "type", "param", "code"}


def test_api_keys_guard_the_front(
    http_mesh: tuple[LocalMesh, str], client: openai.OpenAI, smollm2: model_pb2.Model
) -> None:
    base = http_mesh[1]
    body = json.dumps({"model": smollm2.name, "prompt": "Hi", "max_tokens": 2}).encode()
    for headers in ({}, {"authorization": "Bearer not-the-key"}):
        for method, path, payload in (("POST", "/completions", body), ("GET", "/models", None)):
            status, reply = _raw(base, method, path, payload, headers)
            assert status == 401, (headers, path, reply)
            assert set(reply["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="not-the-key", max_retries=0).models.list()
    status, reply = _raw(base, "POST", "/completions", body, AUTH)
    assert status == 200 and reply["object"] == "text_completion"


def _connection(base: str) -> tuple[http.client.HTTPConnection, str]:
    url = urlsplit(base)
    assert url.hostname is not None and url.port is not None
    return http.client.HTTPConnection(url.hostname, url.port, timeout=60), url.path


def _raw(
    base: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    connection, prefix = _connection(base)
    try:
        connection.request(method, prefix + path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _running_sequences(mesh: LocalMesh) -> int:
    """Sequences decoding on the mesh's worker now, as the worker itself reports them."""
    with grpc.insecure_channel(mesh.worker_addresses[0]) as channel:
        stub = worker_pb2_grpc.WorkerServiceStub(channel)
        return int(
            stub.GetStatus(worker_pb2.GetStatusRequest(), timeout=5).status.running_sequences
        )


def test_client_disconnect_cancels_the_generation(
    http_mesh: tuple[LocalMesh, str], smollm2: model_pb2.Model
) -> None:
    mesh, base = http_mesh
    body = {
        "model": smollm2.name,
        "prompt": "1, 2, 3, 4, 5, 6,",
        "max_tokens": 2000,
        "temperature": 0.0,
        "stream": True,
    }
    connection, prefix = _connection(base)
    try:
        connection.request(
            "POST",
            prefix + "/completions",
            body=json.dumps(body),
            headers={"content-type": "application/json", **AUTH},
        )
        response = connection.getresponse()
        assert response.status == 200
        got = [response.readline() for _ in range(6)]
        assert any(line.startswith(b"data: ") for line in got)
        # The generation is under way on the worker (2000 tokens take far longer than
        # this test): what the disconnect below must stop.
        assert _running_sequences(mesh) >= 1, "no sequence was running before the disconnect"
    finally:
        connection.close()  # the client goes away mid-stream
    # The worker stops decoding: nothing is running there any more.
    deadline = time.monotonic() + 10
    while _running_sequences(mesh):
        assert time.monotonic() < deadline, "the generation kept running"
        time.sleep(0.2)
