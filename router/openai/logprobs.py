"""TokenDelta.logprobs -> OpenAI's two logprob shapes (chat's `content` list, the legacy
completions' parallel arrays)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modelyard.v1 import common_pb2

Logprobs = Sequence[common_pb2.TokenLogprob]


def _text(token: bytes) -> str:
    # A token may hold part of a UTF-8 character: its text then shows U+FFFD, and
    # `bytes` (chat) carries the exact bytes, as OpenAI does.
    return token.decode("utf-8", errors="replace")


def chat_logprobs(logprobs: Logprobs) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": _text(lp.token),
                "logprob": lp.logprob,
                "bytes": list(lp.token),
                "top_logprobs": [
                    {"token": _text(t.token), "logprob": t.logprob, "bytes": list(t.token)}
                    for t in lp.top_logprobs
                ],
            }
            for lp in logprobs
        ],
        "refusal": None,
    }


def completion_logprobs(logprobs: Logprobs, offset: int) -> dict[str, Any]:
    """Legacy shape; `offset`: where the first token's text starts (the prompt's length
    plus the text before it, as OpenAI and llama-cpp-python count)."""
    offsets: list[int] = []
    for lp in logprobs:
        offsets.append(offset)
        offset += len(_text(lp.token))
    return {
        "tokens": [_text(lp.token) for lp in logprobs],
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [{_text(t.token): t.logprob for t in lp.top_logprobs} for lp in logprobs],
        "text_offset": offsets,
    }
