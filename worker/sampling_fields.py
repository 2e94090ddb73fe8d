"""The contract's structured-output and logprob fields <-> the engines' plain types."""

from __future__ import annotations

from collections.abc import Iterable

from modelyard.v1 import common_pb2
from worker.engines.base import OutputFormat, TokenLogprob


def output_format_of(f: common_pb2.ResponseFormat) -> OutputFormat | None:
    """None for free text; the request was validated (modelyard.validation) before."""
    if f.type == common_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT:
        return OutputFormat()
    if f.type == common_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        return OutputFormat(json_schema=f.json_schema)
    if f.type == common_pb2.RESPONSE_FORMAT_TYPE_REGEX:
        return OutputFormat(regex=f.regex)
    if f.type == common_pb2.RESPONSE_FORMAT_TYPE_GRAMMAR:
        lark = f.grammar_syntax == common_pb2.GRAMMAR_SYNTAX_LARK
        return OutputFormat(grammar=f.grammar, grammar_syntax="lark" if lark else "gbnf")
    return None


def logprobs_of(s: common_pb2.SamplingParams) -> int | None:
    return s.top_logprobs if s.logprobs else None


def token_logprobs_pb(logprobs: Iterable[TokenLogprob]) -> list[common_pb2.TokenLogprob]:
    return [
        common_pb2.TokenLogprob(
            token_id=lp.token_id,
            token=lp.token,
            logprob=lp.logprob,
            top_logprobs=[
                common_pb2.TopLogprob(token_id=t.token_id, token=t.token, logprob=t.logprob)
                for t in lp.top
            ],
        )
        for lp in logprobs
    ]
