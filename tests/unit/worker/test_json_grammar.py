"""The JSON grammars llama.cpp enforces: a string never holds a raw control character
(JSON forbids them; llama-cpp-python's schema converter allowed them, and a sampled
newline inside a string made invalid JSON)."""

from __future__ import annotations

import json

import pytest

from worker.engines.base import OutputFormat
from worker.engines.llama_grammar import grammar_of

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name"],
}


@pytest.mark.parametrize("fmt", [OutputFormat(json_schema=json.dumps(SCHEMA)), OutputFormat()])
def test_string_characters_exclude_control_characters(fmt: OutputFormat) -> None:
    """Every rule that admits a string character excludes DEL and \\x00-\\x1F."""
    gbnf = grammar_of(fmt)
    lax = [line for line in gbnf.splitlines() if '[^"\\\\]' in line]
    assert lax == [], lax
    assert r"\x7F\x00-\x1F]" in gbnf
