"""ResponseFormat's regex and grammar fields: each needs its type, fits its limit, and a
regex compiles; every fault names its field."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.v1 import common_pb2
from modelyard.validation import MAX_GRAMMAR_BYTES, MAX_REGEX_BYTES, sampling_violations

REGEX = common_pb2.RESPONSE_FORMAT_TYPE_REGEX
GRAMMAR = common_pb2.RESPONSE_FORMAT_TYPE_GRAMMAR
GBNF = common_pb2.GRAMMAR_SYNTAX_GBNF
LARK = common_pb2.GRAMMAR_SYNTAX_LARK


def fields(**fmt: Any) -> list[str]:
    s = common_pb2.SamplingParams(response_format=common_pb2.ResponseFormat(**fmt))
    return [v.field for v in sampling_violations(s)]


@pytest.mark.parametrize(
    "fmt",
    [
        {"type": REGEX, "regex": "[A-Z]{3}-[0-9]{4}"},
        {"type": GRAMMAR, "grammar": 'root ::= "yes" | "no"', "grammar_syntax": GBNF},
        {"type": GRAMMAR, "grammar": 'start: "yes" | "no"', "grammar_syntax": LARK},
        {"type": REGEX, "regex": "x" * MAX_REGEX_BYTES},
    ],
)
def test_well_formed_regex_and_grammar_formats_pass(fmt: dict[str, Any]) -> None:
    assert fields(**fmt) == []


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ({"type": REGEX}, ["regex"]),
        ({"type": REGEX, "regex": "(unclosed"}, ["regex"]),
        ({"type": REGEX, "regex": "a{2,1}"}, ["regex"]),
        ({"type": REGEX, "regex": "é" * (MAX_REGEX_BYTES // 2 + 1)}, ["regex"]),  # bytes
        ({"type": REGEX, "regex": "a", "grammar": "b"}, ["grammar"]),
        ({"type": REGEX, "regex": "a", "json_schema": "{}"}, ["json_schema"]),
        ({"type": GRAMMAR, "grammar_syntax": GBNF}, ["grammar"]),
        ({"type": GRAMMAR, "grammar": "root ::= [a]"}, ["grammar_syntax"]),
        ({"type": GRAMMAR, "grammar": "x", "grammar_syntax": 7}, ["grammar_syntax"]),
        (
            {"type": GRAMMAR, "grammar": "x" * (MAX_GRAMMAR_BYTES + 1), "grammar_syntax": LARK},
            ["grammar"],
        ),
        ({"type": GRAMMAR, "grammar": "x", "grammar_syntax": GBNF, "regex": "a"}, ["regex"]),
        (
            {"type": common_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT, "grammar_syntax": LARK},
            ["grammar_syntax"],
        ),
        ({"type": common_pb2.RESPONSE_FORMAT_TYPE_TEXT, "regex": "a"}, ["regex"]),
        (
            {"type": common_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, "json_schema": "[]"},
            ["json_schema"],
        ),
    ],
)
def test_each_fault_names_its_field(fmt: dict[str, Any], expected: list[str]) -> None:
    assert fields(**fmt) == [f"sampling.response_format.{name}" for name in expected]


def test_a_regex_fault_says_where_without_echoing_much() -> None:
    s = common_pb2.SamplingParams(
        response_format=common_pb2.ResponseFormat(type=REGEX, regex="ab(c")
    )
    (violation,) = sampling_violations(s)
    assert violation.description.startswith("is not a valid regular expression: missing )")
