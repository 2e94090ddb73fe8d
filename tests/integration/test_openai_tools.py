"""Tools end to end on a real mesh serving the real SmolLM2 on llama.cpp: through the
official `openai` SDK (required, named and none choices, a tool round trip, streamed
tool-call chunks) and through the router's gRPC stubs (Generate and Complete)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import openai
import pytest
from openai.types.chat import (
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
    ChatCompletionToolParam,
)
from pydantic_ai import Agent, RunContext
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.settings import ModelSettings

from modelyard.bearer import bearer_metadata
from modelyard.local_mesh import LocalMesh
from modelyard.v1 import common_pb2, model_pb2, router_pb2, router_pb2_grpc
from tests.integration.conftest import register

pytestmark = pytest.mark.integration

API_KEY = "openai-tools-test-key"
SCHEMAS: dict[str, dict[str, Any]] = {
    "get_weather": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "unit": {"enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    "get_time": {
        "type": "object",
        "properties": {"timezone": {"type": "string", "maxLength": 40}},
        "required": ["timezone"],
        "additionalProperties": False,
    },
}
DESCRIPTIONS = {"get_weather": "Current weather in a city", "get_time": "Time in a timezone"}
TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {"name": name, "description": DESCRIPTIONS[name], "parameters": schema},
    }
    for name, schema in SCHEMAS.items()
]
ASK: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "What is the weather in Paris?"}
]
CALL_TOKENS = 96  # room for a whole call: the grammar ends it well before
# Generous: on a loaded 2-core build machine one call has taken a minute (quiet: seconds).
TIMEOUT_S = 280


@pytest.fixture(scope="module")
def tools_mesh(
    tmp_path_factory: pytest.TempPathFactory, smollm2: model_pb2.Model
) -> Iterator[LocalMesh]:
    mesh = LocalMesh(
        data_dir=Path(tmp_path_factory.mktemp("tools-mesh")),
        worker_threads=2,
        router_http_port=0,
        env={"MODELYARD_ROUTER_API_KEYS": API_KEY},
    )
    mesh.start()
    try:
        assert smollm2.capabilities.tools  # the bundled entry offers tools
        register(mesh.registry_address, smollm2)
        plain = model_pb2.Model()
        plain.CopyFrom(smollm2)
        plain.name = "smollm2-no-tools"
        plain.capabilities.tools = False
        register(mesh.registry_address, plain)
        yield mesh
    finally:
        mesh.stop()


@pytest.fixture(scope="module")
def client(tools_mesh: LocalMesh) -> openai.OpenAI:
    base_url = f"http://{tools_mesh.router_http_address}/v1"
    return openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def stub(tools_mesh: LocalMesh) -> Iterator[router_pb2_grpc.RouterServiceStub]:
    with grpc.insecure_channel(tools_mesh.router_address) as channel:
        yield router_pb2_grpc.RouterServiceStub(channel)


def function_of(call: Any) -> tuple[str, str]:
    assert isinstance(call, ChatCompletionMessageFunctionToolCall)
    return call.function.name, call.function.arguments


def valid_call(name: str, arguments: str) -> dict[str, Any]:
    """The call's arguments, checked against its tool's schema."""
    assert name in SCHEMAS
    parsed = json.loads(arguments)
    jsonschema.validate(parsed, SCHEMAS[name])
    return parsed  # type: ignore[no-any-return]


def test_required_call_validates_and_its_result_gets_an_answer(
    client: openai.OpenAI, smollm2: model_pb2.Model
) -> None:
    called = client.chat.completions.create(
        model=smollm2.name,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        temperature=0,
        max_tokens=CALL_TOKENS,
    )
    choice = called.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    valid_call(*function_of(call))
    assert called.usage is not None and called.usage.completion_tokens > 0
    result = {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21, "sky": "sunny"}'}
    # As agents do: the SDK's own message object goes back into the conversation.
    answer = client.chat.completions.create(
        model=smollm2.name,
        messages=[*ASK, choice.message, result],  # type: ignore[list-item]
        tools=TOOLS,
        temperature=0,
        max_tokens=32,
    )
    reply = answer.choices[0]
    assert reply.finish_reason in ("stop", "length") and not reply.message.tool_calls
    assert reply.message.content and reply.message.content.strip()


def test_streamed_required_call_reassembles_to_the_same_call(
    client: openai.OpenAI, smollm2: model_pb2.Model
) -> None:
    request: dict[str, Any] = {
        "model": smollm2.name,
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": "required",
        "temperature": 0,
        "max_tokens": CALL_TOKENS,
    }
    whole = client.chat.completions.create(**request).choices[0].message.tool_calls
    assert whole
    calls: dict[int, dict[str, str]] = {}
    finishes = []
    for chunk in client.chat.completions.create(**request, stream=True):
        for c in chunk.choices:
            finishes.append(c.finish_reason)
            for piece in c.delta.tool_calls or ():
                call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += piece.id or ""
                assert piece.function is not None
                call["name"] += piece.function.name or ""
                call["arguments"] += piece.function.arguments or ""
    assert list(calls) == [0] and finishes[-1] == "tool_calls"
    assert calls[0]["id"].startswith("call_")
    streamed = valid_call(calls[0]["name"], calls[0]["arguments"])
    name, arguments = function_of(whole[0])
    assert (calls[0]["name"], streamed) == (name, json.loads(arguments))


def test_a_named_choice_calls_that_function_and_none_calls_nothing(
    client: openai.OpenAI, smollm2: model_pb2.Model
) -> None:
    named = client.chat.completions.create(
        model=smollm2.name,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        temperature=0,
        max_tokens=CALL_TOKENS,
    )
    calls = named.choices[0].message.tool_calls
    assert calls and len(calls) == 1 and function_of(calls[0])[0] == "get_time"
    valid_call(*function_of(calls[0]))
    silent = client.chat.completions.create(
        model=smollm2.name,
        messages=ASK,
        tools=TOOLS,
        tool_choice="none",
        temperature=0,
        max_tokens=16,
    )
    assert not silent.choices[0].message.tool_calls
    assert silent.choices[0].finish_reason in ("stop", "length")
    assert silent.choices[0].message.content


def _grpc_request(model: str) -> router_pb2.GenerateRequest:
    return router_pb2.GenerateRequest(
        model=model,
        messages=[common_pb2.ChatMessage(role="user", content="What is the weather in Paris?")],
        sampling=common_pb2.SamplingParams(temperature=0, max_tokens=CALL_TOKENS),
        tools=[
            common_pb2.ToolDefinition(
                name=name, description=DESCRIPTIONS[name], parameters_json_schema=json.dumps(s)
            )
            for name, s in SCHEMAS.items()
        ],
        tool_choice=common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_REQUIRED),
    )


def test_grpc_generate_and_complete_carry_the_call(
    stub: router_pb2_grpc.RouterServiceStub, smollm2: model_pb2.Model
) -> None:
    auth = bearer_metadata(API_KEY)
    events = list(stub.Generate(_grpc_request(smollm2.name), timeout=TIMEOUT_S, metadata=auth))
    deltas = [e.delta for e in events if e.WhichOneof("event") == "delta"]
    pieces = [c for d in deltas for c in d.tool_calls]
    assert [p.index for p in pieces] == [0] and pieces[0].id.startswith("call_")
    assert "".join(d.text for d in deltas) == ""  # the call is not text
    finished = events[-1].finished
    assert finished.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
    assert finished.usage.output_tokens == sum(len(d.token_ids) for d in deltas) > 0
    generated = valid_call(pieces[0].name, pieces[0].arguments)
    complete = router_pb2.CompleteRequest.FromString(
        _grpc_request(smollm2.name).SerializeToString()
    )
    reply = stub.Complete(complete, timeout=TIMEOUT_S, metadata=auth)
    assert reply.finished.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
    assert [c.name for c in reply.tool_calls] == [pieces[0].name]
    assert valid_call(reply.tool_calls[0].name, reply.tool_calls[0].arguments) == generated


def test_a_model_without_tools_is_never_picked_for_a_tool_request(
    stub: router_pb2_grpc.RouterServiceStub,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(
            stub.Generate(
                _grpc_request("smollm2-no-tools"),
                timeout=TIMEOUT_S,
                metadata=bearer_metadata(API_KEY),
            )
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "tools" in (caught.value.details() or "")


class _CallWeatherFirst(AbstractCapability[None]):
    """Step 1 must call get_weather (the 135M model would not choose to); step 2 answers in
    text from the tool's result: the agent's loop, with the tool choice per step."""

    def get_model_settings(self) -> Any:
        def per_step(ctx: RunContext[None]) -> ModelSettings:
            first = ctx.run_step <= 1
            return ModelSettings(tool_choice=["get_weather"] if first else "none")

        return per_step


def test_an_agent_framework_runs_its_tool_loop_against_the_front(
    tools_mesh: LocalMesh, smollm2: model_pb2.Model
) -> None:
    """pydantic-ai (its own OpenAI client and message handling) calls the tool, runs it,
    sends the result back and gets the final answer."""
    cities: list[str] = []
    model = OpenAIChatModel(
        smollm2.name,
        provider=OpenAIProvider(
            base_url=f"http://{tools_mesh.router_http_address}/v1", api_key=API_KEY
        ),
    )
    agent = Agent(
        model,
        capabilities=[_CallWeatherFirst()],
        model_settings=ModelSettings(temperature=0, max_tokens=CALL_TOKENS, timeout=TIMEOUT_S),
    )

    @agent.tool_plain
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        cities.append(city)
        return f"Sunny and 21 C in {city}."

    result = agent.run_sync("What is the weather in Paris?")
    assert len(cities) == 1 and cities[0].strip()
    kinds = [type(p).__name__ for m in result.all_messages() for p in m.parts]
    assert kinds.index("ToolCallPart") < kinds.index("ToolReturnPart") < len(kinds) - 1
    assert isinstance(result.output, str) and result.output.strip()
    assert result.usage.requests == 2
