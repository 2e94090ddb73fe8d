"""Token arithmetic both the router and the worker need before any tokenizer is at hand."""

from __future__ import annotations

from collections.abc import Sequence

from modelyard.v1 import common_pb2

CHARS_PER_TOKEN = 4
CHAT_MESSAGE_OVERHEAD_CHARS = 8  # role markers a chat template adds per message


def estimate_tokens(chars: int) -> int:
    """~4 characters a token, rounded up: queue accounting and routing before tokenizing."""
    return -(-chars // CHARS_PER_TOKEN)


def estimate_prompt_tokens(prompt: str, messages: Sequence[common_pb2.ChatMessage]) -> int:
    """The one estimate of a request's prompt length, for the router and the worker alike."""
    chars = len(prompt) + sum(len(m.content) + CHAT_MESSAGE_OVERHEAD_CHARS for m in messages)
    return estimate_tokens(chars)
