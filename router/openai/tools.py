"""OpenAI's tools <-> the contract's: definitions and tool choice in, tool calls out
(whole, for `message.tool_calls`, and streamed, as OpenAI's chunk `delta.tool_calls`)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from modelyard.v1 import common_pb2, router_pb2
from router.openai.bodies import ChatBody, Message, NamedToolChoice
from router.openai.errors import invalid

_MODES = {
    "auto": common_pb2.TOOL_CHOICE_MODE_AUTO,
    "none": common_pb2.TOOL_CHOICE_MODE_NONE,
    "required": common_pb2.TOOL_CHOICE_MODE_REQUIRED,
}


def add_tools(request: router_pb2.GenerateRequest, body: ChatBody) -> None:
    """The body's tools and tool choice onto the request (the router validates the rest:
    names, sizes, a choice naming a defined tool)."""
    for t in body.tools or ():
        f = t.function
        request.tools.add(
            name=f.name,
            description=f.description or "",
            parameters_json_schema=json.dumps(f.parameters) if f.parameters is not None else "",
            strict=bool(f.strict),
        )
    choice = body.tool_choice
    if choice is None or choice in ("auto", "none"):
        if body.tools:  # without tools, "auto" and "none" ask for nothing
            request.tool_choice.mode = _MODES[choice or "auto"]
        return
    names = {t.function.name for t in body.tools or ()}
    if choice == "required":
        request.tool_choice.mode = common_pb2.TOOL_CHOICE_MODE_REQUIRED
    else:
        request.tool_choice.mode = common_pb2.TOOL_CHOICE_MODE_FUNCTION
        request.tool_choice.function_name = _named(choice).function.name
    if request.tool_choice.function_name not in names | {""} or not names:
        raise invalid("'tool_choice' must name a function of 'tools'", "tool_choice")


def _named(choice: dict[str, Any]) -> NamedToolChoice:
    try:
        return NamedToolChoice.model_validate(choice)
    except ValidationError:  # the client sent `tool_choice`: the 400 names it
        raise invalid(
            "'tool_choice' must be 'auto', 'none', 'required' or "
            '{"type": "function", "function": {"name": ...}}',
            "tool_choice",
        ) from None


def message_calls(message: Message) -> list[common_pb2.ToolCall]:
    return [
        common_pb2.ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
        for c in message.tool_calls or ()
    ]


def gather(calls: list[dict[str, Any]], deltas: Iterable[common_pb2.ToolCallDelta]) -> None:
    """Streamed call pieces into whole calls in OpenAI's `message.tool_calls` shape."""
    for d in deltas:
        if d.index == len(calls):
            calls.append(
                {"id": d.id, "type": "function", "function": {"name": d.name, "arguments": ""}}
            )
        if d.index < len(calls):
            calls[d.index]["function"]["arguments"] += d.arguments


def chunk_calls(deltas: Iterable[common_pb2.ToolCallDelta]) -> list[dict[str, Any]]:
    """OpenAI's chunk `delta.tool_calls`: a call's first piece has its id, type and name,
    later pieces only its index and more arguments."""
    out = []
    for d in deltas:
        piece: dict[str, Any] = {"index": d.index, "function": {"arguments": d.arguments}}
        if d.id:
            piece["id"] = d.id
            piece["type"] = "function"
            piece["function"]["name"] = d.name
        out.append(piece)
    return out


def kept(deltas: Iterable[common_pb2.ToolCallDelta], parallel: bool) -> list[Any]:
    """With parallel_tool_calls false, the turn's first call only."""
    return [d for d in deltas if parallel or d.index == 0]
