"""Regex -> GBNF: what each construct becomes, and what is refused rather than widened.
(That llama.cpp compiles and obeys the output is tested on the real SmolLM2 in
test_worker_structured.py.)"""

from __future__ import annotations

import pytest

from worker.engines.regex_gbnf import RegexNotSupported, regex_to_gbnf


@pytest.mark.parametrize(
    ("pattern", "gbnf"),
    [
        ("[A-Z]{3}-[0-9]{4}", 'root ::= ([A-Z]){3} "-" ([0-9]){4}'),
        ("^(yes|no)$", 'root ::= (("y" "e" "s" | "n" "o"))'),
        (r"\d+\w*?\s", r"root ::= ([0-9])+ ([a-zA-Z0-9_])* [ \t\n\r\x0B\x0C]"),
        (r"[^a-c\d]", "root ::= [^a-c0-9]"),
        (r"[\D][^\W]", "root ::= [^0-9] [a-zA-Z0-9_]"),
        ("(?:x|y){2,}z{1,3}", 'root ::= ([xy]){2,} ("z"){1,3}'),
        (".(?s:.)", r"root ::= [^\n] ([\x00-\U0010FFFF])"),
        ('"\\\\é€', r'root ::= "\x22" "\x5C" "\xE9" "\u20AC"'),
        (r"[-\]]", r"root ::= [\x2D\x5D]"),
        ("(a|)", 'root ::= (("a" | ""))'),
        ("", 'root ::= ""'),
    ],
)
def test_constructs_become_their_gbnf(pattern: str, gbnf: str) -> None:
    assert regex_to_gbnf(pattern) == gbnf + "\n"


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(a)\1", "backreferences"),
        ("a(?=b)", "lookahead"),
        ("(?<!a)b", "lookahead and lookbehind"),
        ("(?i)abc", "case-insensitive"),
        ("a(?i:b)", "case-insensitive"),
        (r"a\bb", "anchors"),
        ("a^b", "anchors"),
        (r"[\Da]", "inside a larger character class"),
        ("a++", "possessive"),
    ],
)
def test_what_a_grammar_cannot_say_is_refused(pattern: str, reason: str) -> None:
    with pytest.raises(RegexNotSupported, match=reason):
        regex_to_gbnf(pattern)
