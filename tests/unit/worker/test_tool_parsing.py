"""Reading tool calls out of decoded text (worker/tools): the AUTO marker parser with
markers split across pieces, the forced-call parser, the stream wrapper's finish reason,
the plain-turn rendering of tools and tool turns, and the forced-call schema."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence

import jsonschema
import pytest

from worker.engines.base import (
    ChatTurn,
    EngineEvent,
    Finished,
    FinishReason,
    Piece,
    Scheduled,
    ToolCallTurn,
    ToolPrompt,
    ToolSpec,
)
from worker.engines.tool_prompt import plain_turns
from worker.tools.constraint import forced_call_format
from worker.tools.parser import MarkerParser, Parsed, WholeParser
from worker.tools.stream import with_tool_calls

NAMES = ("get_weather", "get_time")
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def feed_all(parser: MarkerParser, pieces: Sequence[str]) -> tuple[str, list[Parsed]]:
    out = [parser.feed(p) for p in pieces] + [parser.finish()]
    return "".join(p.text for p in out), out


def split_everywhere(text: str) -> list[list[str]]:
    return [[text[:i], text[i:]] for i in range(1, len(text))]


@pytest.mark.parametrize("pieces", [list(CALL), *split_everywhere(CALL)])
def test_a_call_split_anywhere_is_one_call_and_no_text(pieces: list[str]) -> None:
    text, parsed = feed_all(MarkerParser(NAMES), ["Sure. ", *pieces, " Done."])
    calls = [c for p in parsed for c in p.calls]
    assert text == "Sure.  Done."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert calls[0].id.startswith("call_") and len(calls[0].id) <= 64


def test_text_that_only_looks_like_a_marker_start_is_released() -> None:
    parser = MarkerParser(NAMES)
    held = parser.feed("a <tool")
    assert held.text == "a "  # "<tool" may begin a marker: held back
    assert parser.feed("box> b").text == "<toolbox> b"
    assert parser.finish() == Parsed("")


def test_two_calls_and_invalid_blocks() -> None:
    time_call = '<tool_call>{"name": "get_time", "arguments": "{\\"tz\\": \\"UTC\\"}"}</tool_call>'
    unknown = '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'
    text, parsed = feed_all(MarkerParser(NAMES), [CALL, unknown, time_call])
    calls = [c for p in parsed for c in p.calls]
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[1].arguments) == {"tz": "UTC"}  # arguments given as a string
    assert text == unknown  # not a call of a defined tool: the model's text, kept
    assert len({c.id for c in calls}) == 2


def test_an_unclosed_block_is_a_call_when_complete_else_text() -> None:
    _, parsed = feed_all(MarkerParser(NAMES), ['<tool_call>{"name": "get_time", "arguments": {}}'])
    assert [c.name for p in parsed for c in p.calls] == ["get_time"]
    text, cut = feed_all(MarkerParser(NAMES), ['<tool_call>{"name": "get_ti'])
    assert text == '<tool_call>{"name": "get_ti' and not any(p.calls for p in cut)


def test_the_forced_parser_reads_the_whole_output() -> None:
    parser = WholeParser(NAMES)
    assert parser.feed('{"name": "get_time", ') == Parsed()
    parser.feed('"arguments": {"tz": "UTC"}}')
    assert [c.name for c in parser.finish().calls] == ["get_time"]
    cut = WholeParser(NAMES)
    cut.feed('{"name": "get_time", "argu')
    assert cut.finish() == Parsed('{"name": "get_time", "argu')


async def _events(texts: Sequence[str], reason: FinishReason) -> AsyncGenerator[EngineEvent, None]:
    yield Scheduled(5)
    for i, t in enumerate(texts):
        yield Piece(t, (i,))
    yield Finished(reason, 5, len(texts))


async def parsed_stream(texts: Sequence[str]) -> list[EngineEvent]:
    stream = with_tool_calls(_events(texts, FinishReason.STOP), MarkerParser(NAMES))
    return [e async for e in stream]


async def test_the_stream_moves_calls_out_of_text_and_finishes_tool_calls() -> None:
    pieces = ["Hi ", CALL[:15], CALL[15:]]
    events = [
        e async for e in with_tool_calls(_events(pieces, FinishReason.STOP), MarkerParser(NAMES))
    ]
    deltas = [e for e in events if isinstance(e, Piece)]
    assert [d.token_ids for d in deltas] == [(0,), (1,), (2,)]  # usage counts every token
    assert "".join(d.text for d in deltas) == "Hi "
    calls = [c for d in deltas for c in d.tool_calls]
    assert [(c.index, c.name) for c in calls] == [(0, "get_weather")]
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason is FinishReason.TOOL_CALLS
    plain = [
        e async for e in with_tool_calls(_events(["Hi"], FinishReason.STOP), MarkerParser(NAMES))
    ]
    assert isinstance(plain[-1], Finished) and plain[-1].reason is FinishReason.STOP


def test_plain_turns_show_tools_calls_and_results() -> None:
    tools = ToolPrompt((ToolSpec("get_time", "Time in a zone", '{"type": "object"}'),))
    turns = plain_turns(
        [
            ChatTurn("system", "Be brief."),
            ChatTurn("user", "Time?"),
            ChatTurn("assistant", "", tool_calls=(ToolCallTurn("c1", "get_time", "{}"),)),
            ChatTurn("tool", "12:00", tool_call_id="c1"),
        ],
        tools,
    )
    assert [t.role for t in turns] == ["system", "user", "assistant", "user"]
    assert turns[0].content.startswith("Be brief.") and '"name": "get_time"' in turns[0].content
    assert "<tool_call>" in turns[0].content  # the call format the parser reads back
    assert turns[2].content == call_text("get_time")
    assert turns[3].content == "<tool_response>\n12:00\n</tool_response>"
    silent = plain_turns([ChatTurn("user", "Time?")], ToolPrompt(tools.tools, may_call=False))
    assert "<tool_call>" not in silent[0].content and "get_time" in silent[0].content


def call_text(name: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {{}}}}\n</tool_call>'


def test_the_forced_schema_takes_only_valid_calls() -> None:
    weather = ToolSpec("get_weather", "", json.dumps({"type": "object", "required": ["city"]}))
    fmt = forced_call_format([weather, ToolSpec("get_time")])
    assert fmt.json_schema is not None
    schema = json.loads(fmt.json_schema)
    jsonschema.validate({"name": "get_weather", "arguments": {"city": "P"}}, schema)
    jsonschema.validate({"name": "get_time", "arguments": {}}, schema)
    for bad in (
        {"name": "get_weather", "arguments": {}},
        {"name": "other", "arguments": {}},
        {"name": "get_time"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
