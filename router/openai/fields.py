"""Typed reads of an OpenAI request body: each one either returns a value the router's
messages can hold or raises a 400 naming the parameter.

JSON allows what protobuf and the router cannot take: integers of any size, floats that
overflow, strings with unpaired surrogate escapes ("\\ud800"), any type anywhere. Each is
refused here, at the edge, rather than surfacing as a 500 from deep inside.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from router.openai.errors import invalid

INT32_MAX = 2**31 - 1
UINT64_MAX = 2**64 - 1


def string(value: Any, param: str) -> str:
    """A JSON string that is valid Unicode (no unpaired surrogate)."""
    if not isinstance(value, str):
        raise invalid(f"'{param}' must be a string", param)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise invalid(
            f"'{param}' is not valid Unicode (an unpaired surrogate at character {err.start})",
            param,
        ) from None
    return value


def optional_string(body: Mapping[str, Any], name: str, param: str | None = None) -> str | None:
    value = body.get(name)
    return None if value is None else string(value, param or name)


def integer(value: Any, param: str, low: int, high: int) -> int:
    """A JSON integer in [low, high] (a bool is not one)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid(f"'{param}' must be an integer", param)
    if not low <= value <= high:
        raise invalid(f"'{param}' must be between {low} and {high}", param)
    return value


def number(value: Any, param: str) -> float:
    """A finite JSON number (NaN, infinities and overflowing integers are refused)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise invalid(f"'{param}' must be a number", param)
    try:
        result = float(value)
    except OverflowError:
        result = math.inf
    if not math.isfinite(result):
        raise invalid(f"'{param}' must be a finite number", param)
    return result


def boolean(body: Mapping[str, Any], name: str, param: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid(f"'{param or name}' must be true or false", param or name)
    return value


def obj(body: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """An optional JSON object (empty when absent)."""
    value = body.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise invalid(f"'{name}' must be an object", name)
    return value


# OpenAI's values for its enum-like parameters, and which of them modelyard honours.
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
TOOL_CHOICES = ("none", "auto", "required")


def check_unsupported(body: Mapping[str, Any]) -> None:
    """The OpenAI parameters modelyard cannot honour are a 400 naming them (never silently
    ignored), and an unknown value of an enum-like one is a 400 listing the known values."""
    response_format = obj(body, "response_format")
    if response_format:
        kind = response_format.get("type")
        if kind not in RESPONSE_FORMATS:
            raise invalid(
                f"'response_format.type' must be one of {', '.join(RESPONSE_FORMATS)}, "
                f"got {_shown(kind)}",
                "response_format.type",
            )
        if kind != "text":
            raise invalid(
                f"'response_format.type' {kind!r} is not supported (only 'text')",
                "response_format.type",
            )
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise invalid("'tools' must be an array", "tools")
    if tools:
        raise invalid("'tools' are not supported", "tools")
    choice = body.get("tool_choice")
    if choice is None or choice == "none":
        return
    if isinstance(choice, Mapping) or choice in TOOL_CHOICES:
        shown = _shown(choice)
        raise invalid(f"'tool_choice' {shown} needs tools, which are not supported", "tool_choice")
    known = ", ".join(TOOL_CHOICES)
    raise invalid(
        f"'tool_choice' must be one of {known} or an object, got {_shown(choice)}", "tool_choice"
    )


def _shown(value: Any) -> str:
    """A client's value, quoted and cut short for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
