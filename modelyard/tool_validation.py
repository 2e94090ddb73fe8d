"""Validation of a request's tools, tool choice and tool-call turns (see ToolDefinition,
ToolChoice and ChatMessage in common.proto), shared by the router and the worker."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from modelyard.errors import FieldViolation
from modelyard.v1 import common_pb2

MAX_TOOLS = 128
MAX_TOOL_CALLS = 128
MAX_DESCRIPTION_BYTES = 4096
MAX_SCHEMA_BYTES = 64 * 1024
MAX_CALL_ID_CHARS = 64
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
NEEDS_TOOLS = (common_pb2.TOOL_CHOICE_MODE_REQUIRED, common_pb2.TOOL_CHOICE_MODE_FUNCTION)


def tool_violations(
    tools: Sequence[common_pb2.ToolDefinition],
    choice: common_pb2.ToolChoice,
    prompt: str,
) -> list[FieldViolation]:
    """The definitions and the choice: names, limits, schemas, a choice that fits them."""
    out: list[FieldViolation] = []
    if len(tools) > MAX_TOOLS:
        return [FieldViolation("tools", f"at most {MAX_TOOLS} tools, got {len(tools)}")]
    if tools and prompt:
        out.append(FieldViolation("tools", "tools need a chat request (messages), not a prompt"))
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        out += _definition_violations(tool, f"tools[{i}]", seen)
        seen.add(tool.name)
    return out + _choice_violations(choice, seen, bool(tools))


def _definition_violations(
    tool: common_pb2.ToolDefinition, field: str, seen: set[str]
) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    if not TOOL_NAME.fullmatch(tool.name):
        out.append(FieldViolation(f"{field}.name", "1 to 64 characters of A-Z, a-z, 0-9, _ and -"))
    elif tool.name in seen:
        out.append(FieldViolation(f"{field}.name", f"tool {tool.name!r} is defined twice"))
    size = len(tool.description.encode("utf-8"))
    if size > MAX_DESCRIPTION_BYTES:
        out.append(
            FieldViolation(
                f"{field}.description", f"at most {MAX_DESCRIPTION_BYTES} bytes, got {size}"
            )
        )
    return out + _schema_violations(tool.parameters_json_schema, f"{field}.parameters_json_schema")


def _schema_violations(text: str, field: str) -> list[FieldViolation]:
    if not text:
        return []
    size = len(text.encode("utf-8"))
    if size > MAX_SCHEMA_BYTES:
        return [FieldViolation(field, f"at most {MAX_SCHEMA_BYTES} bytes, got {size}")]
    try:
        schema = json.loads(text)
    except ValueError as err:  # json's own position message, nothing more
        return [FieldViolation(field, f"is not JSON: {err}")]
    if not isinstance(schema, dict):
        return [FieldViolation(field, "must be a JSON object (a JSON Schema)")]
    return []


def _choice_violations(
    choice: common_pb2.ToolChoice, names: set[str], has_tools: bool
) -> list[FieldViolation]:
    if choice.mode not in common_pb2.ToolChoiceMode.values():
        return [FieldViolation("tool_choice.mode", f"unknown tool choice mode {choice.mode}")]
    if choice.mode in NEEDS_TOOLS and not has_tools:
        mode = common_pb2.ToolChoiceMode.Name(choice.mode)
        return [FieldViolation("tool_choice.mode", f"{mode} needs at least one tool in `tools`")]
    if choice.mode == common_pb2.TOOL_CHOICE_MODE_FUNCTION:
        if choice.function_name not in names:
            return [
                FieldViolation(
                    "tool_choice.function_name",
                    f"names no tool of the request: {choice.function_name[:64]!r}",
                )
            ]
    elif choice.function_name:
        return [
            FieldViolation("tool_choice.function_name", "is only for TOOL_CHOICE_MODE_FUNCTION")
        ]
    return []


def turn_violations(messages: Sequence[common_pb2.ChatMessage]) -> list[FieldViolation]:
    """Tool calls only on assistant turns; a tool turn answers a call made before it."""
    out: list[FieldViolation] = []
    made: set[str] = set()
    for i, m in enumerate(messages):
        field = f"messages[{i}]"
        if m.tool_calls:
            out += _call_violations(m, field, made)
        if m.role == "tool":
            if not m.tool_call_id:
                out.append(FieldViolation(f"{field}.tool_call_id", "a tool message needs one"))
            elif m.tool_call_id not in made:
                out.append(
                    FieldViolation(
                        f"{field}.tool_call_id",
                        f"answers no earlier assistant tool call: {m.tool_call_id[:64]!r}",
                    )
                )
        elif m.tool_call_id:
            out.append(FieldViolation(f"{field}.tool_call_id", "only on role tool"))
    return out


def _call_violations(m: common_pb2.ChatMessage, field: str, made: set[str]) -> list[FieldViolation]:
    if m.role != "assistant":
        return [FieldViolation(f"{field}.tool_calls", "only assistant turns carry tool calls")]
    if len(m.tool_calls) > MAX_TOOL_CALLS:
        return [FieldViolation(f"{field}.tool_calls", f"at most {MAX_TOOL_CALLS} calls")]
    out: list[FieldViolation] = []
    for j, call in enumerate(m.tool_calls):
        where = f"{field}.tool_calls[{j}]"
        if not 0 < len(call.id) <= MAX_CALL_ID_CHARS:
            out.append(FieldViolation(f"{where}.id", f"1 to {MAX_CALL_ID_CHARS} characters"))
        elif call.id in made:
            out.append(FieldViolation(f"{where}.id", f"id {call.id!r} is used twice"))
        if not TOOL_NAME.fullmatch(call.name):
            out.append(FieldViolation(f"{where}.name", "1 to 64 characters of A-Z, a-z, 0-9, _, -"))
        if not _is_object(call.arguments):
            out.append(FieldViolation(f"{where}.arguments", "must be the text of a JSON object"))
        made.add(call.id)
    return out


def _is_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def tool_call_chars(messages: Sequence[common_pb2.ChatMessage]) -> int:
    """Characters the turns' tool calls add to the input."""
    return sum(len(c.name) + len(c.arguments) + len(c.id) for m in messages for c in m.tool_calls)
