"""The OpenAI-compatible HTTP front, through the official `openai` SDK, on a real mesh
(registry, worker, router as processes) serving the real SmolLM2. The router requires an
API key, on gRPC and HTTP alike."""

from __future__ import annotations

import http.client
import inspect
import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from modelyard.bearer import bearer_metadata
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
from tests.integration.conftest import register, until
from tests.openai_cases import (
    CHAT_HONOURED,
    CHAT_REFUSED,
    COMPLETION_HONOURED,
    COMPLETION_REFUSED,
    Honoured,
    Refused,
)

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
    details = chunks[-1].usage.prompt_tokens_details
    assert (
        details is not None and 0 <= (details.cached_tokens or 0) <= chunks[-1].usage.prompt_tokens
    )
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
        client.chat.completions.create(model="x", messages=MESSAGES, n=9)
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


# --- every parameter of the SDK: honoured (served) or refused (400 naming it) ----------

HONOURED = [(True, c) for c in CHAT_HONOURED] + [(False, c) for c in COMPLETION_HONOURED]
REFUSED = [(True, c) for c in CHAT_REFUSED] + [(False, c) for c in COMPLETION_REFUSED]


def _create(client: openai.OpenAI, chat: bool, model: str, patch: dict[str, Any]) -> Any:
    """One request through the SDK: its own keyword for each parameter it knows, the
    extras (top_k, ...) in extra_body as vLLM's clients send them; a stream is read out."""
    if chat:
        create: Any = client.chat.completions.create
        body: dict[str, Any] = {"model": model, "messages": MESSAGES, "max_tokens": 2}
    else:
        create = client.completions.create
        body = {"model": model, "prompt": PROMPT, "max_tokens": 2}
    body |= patch
    known = inspect.signature(create).parameters
    kwargs = {k: v for k, v in body.items() if k in known}
    extra = {k: v for k, v in body.items() if k not in known}
    reply = create(**kwargs, extra_body=extra or None)
    return list(reply) if body.get("stream") else reply


def _case_ids(cases: list[tuple[bool, Any]]) -> list[str]:
    return [("chat-" if chat else "completion-") + case.param for chat, case in cases]


@pytest.mark.parametrize(("chat", "case"), HONOURED, ids=_case_ids(HONOURED))
def test_an_honoured_parameter_is_served(
    client: openai.OpenAI, smollm2: model_pb2.Model, chat: bool, case: Honoured
) -> None:
    reply = _create(client, chat, smollm2.name, case.patch)
    if isinstance(reply, list):  # streamed: chunks, the last with a finish or usage
        assert reply and any(c.choices and c.choices[0].finish_reason for c in reply)
        if case.param == "stream_options":
            assert reply[-1].choices == [] and reply[-1].usage is not None
    else:
        assert reply.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(("chat", "case"), REFUSED, ids=_case_ids(REFUSED))
def test_an_unsupported_parameter_is_a_400_naming_it(
    client: openai.OpenAI, smollm2: model_pb2.Model, chat: bool, case: Refused
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _create(client, chat, smollm2.name, {case.param: case.value})
    body = caught.value.body
    assert isinstance(body, dict) and body["param"] == (case.where or case.param)
    assert "not supported yet" in body["message"]
    # A value asking for nothing (n=1) is accepted: see tests/unit/router/test_openai_params.py.


def test_an_unknown_parameter_is_a_400_naming_it(
    client: openai.OpenAI, smollm2: model_pb2.Model
) -> None:
    for chat in (True, False):
        with pytest.raises(openai.BadRequestError) as caught:
            _create(client, chat, smollm2.name, {"guided_decoding_backend": "xgrammar"})
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["param"] == "guided_decoding_backend"


def test_health_and_metrics_on_the_http_port_need_no_key(
    http_mesh: tuple[LocalMesh, str], client: openai.OpenAI, smollm2: model_pb2.Model
) -> None:
    client.completions.create(model=smollm2.name, prompt=PROMPT, max_tokens=1)
    root = http_mesh[1].removesuffix("/v1")
    status, reply = _raw(root, "GET", "/health")
    assert (status, reply) == (200, {"status": "serving"})
    # The router's own registry counts the request above (once its stream is accounted,
    # which may be just after the client has the answer).
    deadline = time.monotonic() + 30
    while not any('code="OK"' in line for line in _served(root, smollm2.name)):
        assert time.monotonic() < deadline, "the request was not counted on /metrics"
        time.sleep(0.2)


def _served(root: str, model: str) -> list[str]:
    """The request counter's lines for `model`, read from /metrics without a key."""
    connection, _ = _connection(root)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        assert response.status == 200
        assert response.getheader("content-type", "").startswith("text/plain")
        text = response.read().decode()
    finally:
        connection.close()
    prefix = "modelyard_router_requests_total{"
    return [line for line in text.splitlines() if line.startswith(prefix) and model in line]


# --- structured output, logprobs, logit bias and n on the real SmolLM2 -------------------

CAT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "mood": {"enum": ["happy", "sleepy", "grumpy"]},
        "toys": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 2},
        "owner": {
            "type": "object",
            "properties": {"age": {"type": "integer"}},
            "required": ["age"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "mood", "toys", "owner"],
    "additionalProperties": False,
}


def test_a_json_schema_response_validates(client: openai.OpenAI, smollm2: model_pb2.Model) -> None:
    """20 sampled generations (temperature 1, seeds 0..19, batched on the worker): each ends
    with stop, not length, and validates. Constrained decoding, not luck."""
    import jsonschema

    def one(seed: int) -> tuple[str | None, str]:
        reply = client.chat.completions.create(
            model=smollm2.name,
            messages=[{"role": "user", "content": "Describe a cat named Tom."}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "cat", "schema": CAT_SCHEMA, "strict": True},
            },
            temperature=1.0,
            seed=seed,
            max_tokens=200,
        )
        choice = reply.choices[0]
        return choice.finish_reason, choice.message.content or ""

    with ThreadPoolExecutor(max_workers=10) as pool:
        replies = list(pool.map(one, range(20)))
    for finish, content in replies:
        assert finish == "stop", content
        jsonschema.validate(json.loads(content), CAT_SCHEMA)
    assert len({content for _, content in replies}) > 1  # sampled, not one greedy answer


def test_regex_and_grammar_extras_reach_the_engine(
    client: openai.OpenAI, smollm2: model_pb2.Model
) -> None:
    reply = client.completions.create(
        model=smollm2.name,
        prompt="A licence plate:",
        max_tokens=12,
        temperature=1.0,
        extra_body={"structured_outputs": {"regex": "[A-Z]{3}-[0-9]{4}"}},
    )
    assert reply.choices[0].finish_reason == "stop"
    assert re.fullmatch("[A-Z]{3}-[0-9]{4}", reply.choices[0].text)
    # The engine's refusal names the parameter the client sent, not the contract's field.
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=smollm2.name,
            messages=MESSAGES,
            max_tokens=4,
            extra_body={"guided_grammar": "root ::= nowhere"},
        )
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == "guided_grammar"
    # A Lark grammar (llguidance on llama.cpp) and a choice list, sampled.
    choices = ["Yes, sir.", "No (never)"]
    for extra, allowed in (
        ({"guided_grammar": 'start: ("red" | "blue") " sky"'}, {"red sky", "blue sky"}),
        ({"structured_outputs": {"choice": choices}}, set(choices)),
    ):
        for seed in (1, 2):
            chat = client.chat.completions.create(
                model=smollm2.name,
                messages=MESSAGES,
                max_tokens=12,
                temperature=1.0,
                seed=seed,
                extra_body=extra,
            )
            assert chat.choices[0].finish_reason == "stop"
            assert chat.choices[0].message.content in allowed, extra
    with pytest.raises(openai.BadRequestError) as lark:
        client.chat.completions.create(
            model=smollm2.name,
            messages=MESSAGES,
            max_tokens=4,
            extra_body={"structured_outputs": {"grammar": "start: nowhere"}},
        )
    assert isinstance(lark.value.body, dict)
    assert lark.value.body["param"] == "structured_outputs.grammar"


def test_greedy_logprobs_are_the_top_alternative(
    client: openai.OpenAI, smollm2: model_pb2.Model
) -> None:
    reply = client.chat.completions.create(
        model=smollm2.name,
        messages=MESSAGES,
        temperature=0,
        max_tokens=5,
        logprobs=True,
        top_logprobs=3,
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert reply.usage is not None and len(content) == reply.usage.completion_tokens
    assert b"".join(bytes(t.bytes or []) for t in content).decode() == choice.message.content
    for token in content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 3
        assert token.top_logprobs[0].token == token.token
        assert token.top_logprobs[0].logprob == token.logprob


def test_n_choices_at_temperature_0_are_the_same_text(
    client: openai.OpenAI, smollm2: model_pb2.Model
) -> None:
    reply = client.completions.create(
        model=smollm2.name, prompt=PROMPT, n=2, max_tokens=4, temperature=0
    )
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].text == reply.choices[1].text != ""
    assert reply.usage is not None and reply.usage.completion_tokens == 8


def test_a_logit_bias_bans_the_greedy_token(
    client: openai.OpenAI, http_mesh: tuple[LocalMesh, str], smollm2: model_pb2.Model
) -> None:
    request = router_pb2.GenerateRequest(
        model=smollm2.name,
        prompt=PROMPT,
        sampling=common_pb2.SamplingParams(max_tokens=1, temperature=0.0),
    )
    with grpc.insecure_channel(http_mesh[0].router_address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        events = list(stub.Generate(request, timeout=120, metadata=bearer_metadata(API_KEY)))
    first = next(e.delta for e in events if e.WhichOneof("event") == "delta")
    kwargs: dict[str, Any] = {"model": smollm2.name, "prompt": PROMPT, "max_tokens": 1}
    plain = client.completions.create(**kwargs, temperature=0)
    banned = client.completions.create(
        **kwargs, temperature=0, logit_bias={str(first.token_ids[0]): -100}
    )
    assert plain.choices[0].text == first.text != banned.choices[0].text


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"logit_bias": {"5": 101}}, "logit_bias[5]"),
        ({"logit_bias": {"999999999": 1}}, "logit_bias[999999999]"),
        ({"n": 9}, "n"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, None),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ],
)
def test_bad_structured_values_are_400(
    client: openai.OpenAI, smollm2: model_pb2.Model, patch: dict[str, Any], param: str | None
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _create(client, True, smollm2.name, patch)
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["param"] == (param or "response_format.json_schema.schema")


def test_a_chat_without_max_tokens_stops_at_its_routes_ceiling(
    http_mesh: tuple[LocalMesh, str], client: openai.OpenAI, smollm2: model_pb2.Model
) -> None:
    mesh = http_mesh[0]
    route = model_pb2.Route(
        name="capped",
        arms=[model_pb2.RouteArm(name="only", model=key_of(smollm2), weight=1)],
        max_output_tokens_ceiling=12,
    )
    with grpc.insecure_channel(mesh.registry_address) as channel:
        registry_pb2_grpc.RegistryServiceStub(channel).PutRoute(
            registry_pb2.PutRouteRequest(route=route), timeout=30
        )
    listing = router_pb2.RouterServiceListModelsRequest()
    with grpc.insecure_channel(mesh.router_address) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        until(
            lambda: (
                "capped"
                in [
                    r.name
                    for r in stub.ListModels(
                        listing, timeout=10, metadata=bearer_metadata(API_KEY)
                    ).routes
                ]
            ),
            "the router follows the new route",
        )
    story = [{"role": "user", "content": "Tell me a long story about a lighthouse."}]
    reply = client.chat.completions.create(model="capped", messages=story, temperature=0)  # type: ignore[arg-type]
    assert reply.usage is not None
    choice = reply.choices[0]
    if choice.finish_reason == "length":
        assert reply.usage.completion_tokens == 12
    else:  # the model may end first
        assert choice.finish_reason == "stop" and reply.usage.completion_tokens < 12
