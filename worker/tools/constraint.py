"""The constraint behind tool choice REQUIRED and FUNCTION: the output must BE one call,
a JSON object whose `name` is an allowed tool and whose `arguments` validate against that
tool's schema. It is an ordinary JSON Schema output format, so every engine enforces it
with the machinery of `response_format` (llama.cpp grammars, vLLM structured outputs)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from worker.engines.base import OutputFormat, ToolSpec
from worker.engines.tool_prompt import parameters_of


def call_schema(tool: ToolSpec) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": parameters_of(tool)},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def forced_call_format(tools: Sequence[ToolSpec]) -> OutputFormat:
    """One call of one of `tools` (the caller passes the named one alone for FUNCTION)."""
    schemas = [call_schema(t) for t in tools]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    return OutputFormat(json_schema=json.dumps(schema, ensure_ascii=False))
