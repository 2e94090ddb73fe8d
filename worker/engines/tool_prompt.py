"""Showing tools and tool turns to a model, for a chat template.

A template that takes `tools` (Hermes/Qwen style: it renders the definitions itself and
reads assistant `tool_calls` and `tool` turns) gets them in Hugging Face's shapes. Any
other template gets plain turns: a system turn describing the tools and the exact call
format (`<tool_call>` blocks, which worker.tools.parser reads back), assistant calls
written as such blocks, and tool results as `<tool_response>` user turns.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from worker.engines.base import ChatTurn, ToolCallTurn, ToolPrompt, ToolSpec

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"

CALL_FORMAT = (
    "To call a function, answer with only this, one block per call:\n"
    f'{CALL_OPEN}\n{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}\n'
    f"{CALL_CLOSE}\n"
    "The results come back in <tool_response> blocks; then answer the user."
)
NO_CALLS = "Do not call a function now: answer in text."


def takes_tools(template_source: str) -> bool:
    """Whether a chat template renders tools itself (it reads the `tools` variable)."""
    return "tools" in template_source


def parameters_of(tool: ToolSpec) -> dict[str, Any]:
    schema = json.loads(tool.parameters) if tool.parameters else {"type": "object"}
    return schema if isinstance(schema, dict) else {"type": "object"}


def hf_tools(prompt: ToolPrompt) -> list[dict[str, Any]]:
    """The definitions as Hugging Face chat templates expect them (OpenAI's shape)."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": parameters_of(t),
            },
        }
        for t in prompt.tools
    ]


def _arguments(call: ToolCallTurn) -> Any:
    try:
        return json.loads(call.arguments)
    except ValueError:  # validated upstream; keep the text rather than fail the render
        return call.arguments


def hf_turn(m: ChatTurn) -> dict[str, Any]:
    """One turn as a Hugging Face template reads it, tool calls included."""
    turn: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.name:
        turn["name"] = m.name
    if m.tool_calls:
        turn["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": _arguments(c)},
            }
            for c in m.tool_calls
        ]
    if m.tool_call_id:
        turn["tool_call_id"] = m.tool_call_id
    return turn


def call_block(name: str, arguments: Any) -> str:
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{CALL_OPEN}\n{body}\n{CALL_CLOSE}"


def tools_system_text(prompt: ToolPrompt) -> str:
    lines = ["You have access to these functions:"]
    for t in prompt.tools:
        spec = {"name": t.name, "description": t.description, "parameters": parameters_of(t)}
        lines.append(json.dumps(spec, ensure_ascii=False))
    lines.append(CALL_FORMAT if prompt.may_call else NO_CALLS)
    return "\n".join(lines)


def plain_turns(messages: Sequence[ChatTurn], prompt: ToolPrompt | None) -> list[ChatTurn]:
    """Turns any template can render: tools in a system turn, calls and results as text."""
    out = [_plain(m) for m in messages]
    if prompt is None or not prompt.tools:
        return out
    text = tools_system_text(prompt)
    if out and out[0].role == "system":
        return [ChatTurn("system", f"{out[0].content}\n\n{text}"), *out[1:]]
    return [ChatTurn("system", text), *out]


def _plain(m: ChatTurn) -> ChatTurn:
    if m.role == "tool":
        return ChatTurn("user", f"<tool_response>\n{m.content}\n</tool_response>")
    if not m.tool_calls:
        return m
    blocks = [call_block(c.name, _arguments(c)) for c in m.tool_calls]
    content = "\n".join([m.content, *blocks] if m.content else blocks)
    return ChatTurn(m.role, content, m.name)
