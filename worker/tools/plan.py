"""What a request's tools and tool choice mean for its generation: the tools the prompt
shows, the constraint (REQUIRED, FUNCTION) and the parser reading calls back (AUTO and
the forced modes; NONE shows the tools and parses nothing)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from modelyard.errors import InvalidArgument
from modelyard.v1 import common_pb2
from worker.engines.base import ChatTurn, EngineRequest, ToolCallTurn, ToolPrompt, ToolSpec
from worker.tools.constraint import forced_call_format
from worker.tools.parser import MarkerParser, WholeParser
from worker.tools.stream import Parser

FORCED = (common_pb2.TOOL_CHOICE_MODE_REQUIRED, common_pb2.TOOL_CHOICE_MODE_FUNCTION)


def chat_turns(messages: Sequence[common_pb2.ChatMessage]) -> tuple[ChatTurn, ...]:
    return tuple(
        ChatTurn(
            m.role,
            m.content,
            m.name,
            tuple(ToolCallTurn(c.id, c.name, c.arguments) for c in m.tool_calls),
            m.tool_call_id,
        )
        for m in messages
    )


def specs_of(tools: Sequence[common_pb2.ToolDefinition]) -> tuple[ToolSpec, ...]:
    return tuple(ToolSpec(t.name, t.description, t.parameters_json_schema) for t in tools)


def with_tools(
    req: EngineRequest,
    tools: Sequence[common_pb2.ToolDefinition],
    choice: common_pb2.ToolChoice,
) -> tuple[EngineRequest, Parser | None]:
    """The engine request with the request's tools applied, and the parser for its output
    (None: no calls are read). The request was validated (modelyard.tool_validation)."""
    if not tools:
        return req, None
    specs = specs_of(tools)
    mode = choice.mode or common_pb2.TOOL_CHOICE_MODE_AUTO
    if mode == common_pb2.TOOL_CHOICE_MODE_NONE:
        return dataclasses.replace(req, tools=ToolPrompt(specs, may_call=False)), None
    names = [s.name for s in specs]
    prompt = ToolPrompt(specs)
    if mode not in FORCED:
        return dataclasses.replace(req, tools=prompt), MarkerParser(names)
    if req.output_format is not None:
        raise InvalidArgument.for_field(
            "sampling.response_format",
            "cannot be combined with tool choice REQUIRED or FUNCTION (the output is the call)",
        )
    allowed = [s for s in specs if mode != FORCED[1] or s.name == choice.function_name]
    constrained = dataclasses.replace(req, tools=prompt, output_format=forced_call_format(allowed))
    return constrained, WholeParser([s.name for s in allowed])
