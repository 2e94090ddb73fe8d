"""Tool definitions, tool choice and tool-call turns: each bad input is INVALID_ARGUMENT
naming its field (check_generation, as the router and the worker run it)."""

from __future__ import annotations

import json

import pytest

from modelyard.errors import InvalidArgument
from modelyard.v1 import common_pb2
from modelyard.validation import check_generation

Msg = common_pb2.ChatMessage
Tool = common_pb2.ToolDefinition
Choice = common_pb2.ToolChoice
Call = common_pb2.ToolCall
FUNCTION = common_pb2.TOOL_CHOICE_MODE_FUNCTION
SCHEMA = json.dumps({"type": "object", "properties": {"city": {"type": "string"}}})
WEATHER = Tool(name="get_weather", description="Weather in a city", parameters_json_schema=SCHEMA)
ASK = Msg(role="user", content="Weather in Paris?")
CALLED = Msg(
    role="assistant", tool_calls=[Call(id="call_1", name="get_weather", arguments='{"city":"P"}')]
)


def fields_of(
    messages: list[common_pb2.ChatMessage],
    tools: list[common_pb2.ToolDefinition],
    choice: common_pb2.ToolChoice | None = None,
    prompt: str = "",
) -> list[str]:
    try:
        check_generation(prompt, messages, common_pb2.SamplingParams(), tools, choice)
    except InvalidArgument as err:
        return [v.field for v in err.violations]
    return []


def test_a_whole_tool_round_trip_is_valid() -> None:
    answer = Msg(role="tool", tool_call_id="call_1", content='{"temp": 21}')
    choice = Choice(mode=common_pb2.TOOL_CHOICE_MODE_FUNCTION, function_name="get_weather")
    assert fields_of([ASK, CALLED, answer], [WEATHER], choice) == []
    assert fields_of([ASK], []) == []


@pytest.mark.parametrize(
    ("tools", "choice", "field"),
    [
        ([Tool(name="bad name")], None, "tools[0].name"),
        ([Tool(name="x" * 65)], None, "tools[0].name"),
        ([Tool(name="")], None, "tools[0].name"),
        ([WEATHER, WEATHER], None, "tools[1].name"),
        ([Tool(name="t", description="d" * 4097)], None, "tools[0].description"),
        ([Tool(name="t", parameters_json_schema="{nope")], None, "tools[0].parameters_json_schema"),
        ([Tool(name="t", parameters_json_schema="[1]")], None, "tools[0].parameters_json_schema"),
        (
            [Tool(name="t", parameters_json_schema=json.dumps({"d": "x" * 65536}))],
            None,
            "tools[0].parameters_json_schema",
        ),
        ([Tool(name=f"t{i}") for i in range(129)], None, "tools"),
        ([], Choice(mode=common_pb2.TOOL_CHOICE_MODE_REQUIRED), "tool_choice.mode"),
        ([], Choice(mode=FUNCTION, function_name="x"), "tool_choice.mode"),
        (
            [WEATHER],
            Choice(mode=common_pb2.TOOL_CHOICE_MODE_FUNCTION, function_name="get_time"),
            "tool_choice.function_name",
        ),
        ([WEATHER], Choice(mode=common_pb2.ToolChoiceMode.ValueType(99)), "tool_choice.mode"),
    ],
)
def test_bad_definitions_and_choices_name_their_field(
    tools: list[common_pb2.ToolDefinition], choice: common_pb2.ToolChoice | None, field: str
) -> None:
    assert field in fields_of([ASK], tools, choice)


def test_tools_need_messages_not_a_prompt() -> None:
    assert fields_of([], [WEATHER], prompt="Weather?") == ["tools"]


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([ASK, Msg(role="tool", content="21")], "messages[1].tool_call_id"),
        ([ASK, Msg(role="tool", tool_call_id="call_9", content="21")], "messages[1].tool_call_id"),
        ([ASK, Msg(role="tool", tool_call_id="call_1"), CALLED], "messages[1].tool_call_id"),
        ([Msg(role="user", content="x", tool_call_id="call_1")], "messages[0].tool_call_id"),
        ([Msg(role="user", tool_calls=CALLED.tool_calls)], "messages[0].tool_calls"),
        (
            [ASK, Msg(role="assistant", tool_calls=[Call(id="", name="f", arguments="{}")])],
            "messages[1].tool_calls[0].id",
        ),
        (
            [ASK, Msg(role="assistant", tool_calls=[Call(id="c", name="a b", arguments="{}")])],
            "messages[1].tool_calls[0].name",
        ),
        (
            [ASK, Msg(role="assistant", tool_calls=[Call(id="c", name="f", arguments="[1]")])],
            "messages[1].tool_calls[0].arguments",
        ),
        ([ASK, CALLED, CALLED], "messages[2].tool_calls[0].id"),
    ],
)
def test_bad_tool_turns_name_their_field(
    messages: list[common_pb2.ChatMessage], field: str
) -> None:
    assert field in fields_of(messages, [WEATHER])
