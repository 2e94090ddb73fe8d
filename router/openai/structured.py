"""vLLM's structured-output extras -> the contract's ResponseFormat.

A client of vLLM sends `extra_body={"structured_outputs": {"regex": "..."}}` (or
`{"grammar": ...}`, `{"choice": [...]}`, `{"json": schema}`), or the older `guided_regex`,
`guided_grammar`, `guided_choice` and `guided_json`. vLLM takes a grammar in GBNF or Lark
without being told which; so does the front, by vLLM's own rule: a grammar that defines a
rule with `::=` is GBNF, any other is Lark. A choice list is the regex of its escaped
alternatives (every engine enforces regexes); a JSON schema is `response_format`'s.
"""

from __future__ import annotations

import json
import re
from typing import Any

from modelyard.v1 import common_pb2
from modelyard.validation import looks_like_gbnf
from router.openai.bodies import ChatBody, CompletionBody
from router.openai.errors import invalid

_KINDS = ("regex", "grammar", "choice", "json")


def grammar_syntax(grammar: str) -> common_pb2.GrammarSyntax.ValueType:
    if looks_like_gbnf(grammar):
        return common_pb2.GRAMMAR_SYNTAX_GBNF
    return common_pb2.GRAMMAR_SYNTAX_LARK


def _asked(parsed: ChatBody | CompletionBody) -> list[tuple[str, str, Any]]:
    """(parameter, kind, value) of each constraint the extras set."""
    asked: list[tuple[str, str, Any]] = []
    so = parsed.structured_outputs
    if so is not None:
        for key, value in (so.model_extra or {}).items():
            if value is not None:
                param = f"structured_outputs.{key}"
                raise invalid(
                    f"'{param}' is not supported (only 'regex', 'grammar', 'choice' and 'json')",
                    param,
                )
        for kind in _KINDS:
            value = getattr(so, "json_" if kind == "json" else kind)
            if value is not None:
                asked.append((f"structured_outputs.{kind}", kind, value))
    for kind in _KINDS:
        value = getattr(parsed, f"guided_{kind}")
        if value is not None:
            asked.append((f"guided_{kind}", kind, value))
    return asked


def format_param(parsed: ChatBody | CompletionBody) -> str | None:
    """The parameter that set the request's response format, if an extra did."""
    asked = _asked(parsed)
    return asked[0][0] if asked else None


def extra_format(parsed: ChatBody | CompletionBody) -> common_pb2.ResponseFormat | None:
    """The one constraint the extras ask for, if any (a 400 when they ask for two)."""
    asked = _asked(parsed)
    if not asked:
        return None
    if len(asked) > 1:
        raise invalid(
            f"'{asked[1][0]}' cannot be combined with '{asked[0][0]}': one constraint per request",
            asked[1][0],
        )
    param, kind, value = asked[0]
    if not value:
        raise invalid(f"'{param}' must not be empty", param)
    if kind == "regex":
        return common_pb2.ResponseFormat(type=common_pb2.RESPONSE_FORMAT_TYPE_REGEX, regex=value)
    if kind == "choice":
        regex = "|".join(re.escape(choice) for choice in value)
        return common_pb2.ResponseFormat(type=common_pb2.RESPONSE_FORMAT_TYPE_REGEX, regex=regex)
    if kind == "json":
        schema = value if isinstance(value, str) else json.dumps(value)
        return common_pb2.ResponseFormat(
            type=common_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, json_schema=schema
        )
    return common_pb2.ResponseFormat(
        type=common_pb2.RESPONSE_FORMAT_TYPE_GRAMMAR,
        grammar=value,
        grammar_syntax=grammar_syntax(value),
    )
