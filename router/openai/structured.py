"""vLLM's structured-output extras -> the contract's ResponseFormat (regex or grammar).

A client of vLLM sends `extra_body={"structured_outputs": {"regex": "..."}}` (or
`{"grammar": "..."}`), or the older `guided_regex` / `guided_grammar`. vLLM takes a
grammar in GBNF or Lark without being told which; so does the front, by vLLM's own rule:
a grammar that defines a rule with `::=` is GBNF, any other is Lark.
"""

from __future__ import annotations

from modelyard.v1 import common_pb2
from modelyard.validation import looks_like_gbnf
from router.openai.bodies import ChatBody, CompletionBody
from router.openai.errors import invalid


def grammar_syntax(grammar: str) -> common_pb2.GrammarSyntax.ValueType:
    if looks_like_gbnf(grammar):
        return common_pb2.GRAMMAR_SYNTAX_GBNF
    return common_pb2.GRAMMAR_SYNTAX_LARK


def format_param(parsed: ChatBody | CompletionBody) -> str | None:
    """The parameter that set the request's regex or grammar, if an extra did."""
    so = parsed.structured_outputs
    for param, value in (
        ("structured_outputs.regex", so and so.regex),
        ("structured_outputs.grammar", so and so.grammar),
        ("guided_regex", parsed.guided_regex),
        ("guided_grammar", parsed.guided_grammar),
    ):
        if value:
            return param
    return None


def extra_format(parsed: ChatBody | CompletionBody) -> common_pb2.ResponseFormat | None:
    """The one constraint the extras ask for, if any (a 400 when they ask for two)."""
    asked: list[tuple[str, str, bool]] = []  # (param, text, is a regex)
    so = parsed.structured_outputs
    if so is not None:
        for key, value in (so.model_extra or {}).items():
            if value is not None:
                param = f"structured_outputs.{key}"
                raise invalid(
                    f"'{param}' is not supported yet (only 'regex' and 'grammar'; JSON goes "
                    "through 'response_format')",
                    param,
                )
        if so.regex is not None:
            asked.append(("structured_outputs.regex", so.regex, True))
        if so.grammar is not None:
            asked.append(("structured_outputs.grammar", so.grammar, False))
    if parsed.guided_regex is not None:
        asked.append(("guided_regex", parsed.guided_regex, True))
    if parsed.guided_grammar is not None:
        asked.append(("guided_grammar", parsed.guided_grammar, False))
    if not asked:
        return None
    if len(asked) > 1:
        raise invalid(
            f"'{asked[1][0]}' cannot be combined with '{asked[0][0]}': one constraint per request",
            asked[1][0],
        )
    param, text, is_regex = asked[0]
    if not text:
        raise invalid(f"'{param}' must not be empty", param)
    if is_regex:
        return common_pb2.ResponseFormat(type=common_pb2.RESPONSE_FORMAT_TYPE_REGEX, regex=text)
    return common_pb2.ResponseFormat(
        type=common_pb2.RESPONSE_FORMAT_TYPE_GRAMMAR,
        grammar=text,
        grammar_syntax=grammar_syntax(text),
    )
