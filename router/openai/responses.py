"""The router's generation events -> OpenAI response objects and stream chunks."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from modelyard.refs import model_key
from modelyard.v1 import common_pb2
from router.openai.logprobs import Logprobs, chat_logprobs, completion_logprobs

_FINISH = {
    common_pb2.FINISH_REASON_STOP: "stop",
    common_pb2.FINISH_REASON_STOP_SEQUENCE: "stop",
    common_pb2.FINISH_REASON_LENGTH: "length",
    common_pb2.FINISH_REASON_CONTEXT_LENGTH: "length",
    common_pb2.FINISH_REASON_TOOL_CALLS: "tool_calls",
}


def finish_reason(finished: common_pb2.GenerationFinished) -> str:
    return _FINISH.get(finished.finish_reason, "stop")


def usage(u: common_pb2.Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
        # Prompt tokens served from the worker's prefix cache (OpenAI's cached tokens).
        "prompt_tokens_details": {"cached_tokens": u.cached_input_tokens},
    }


def total_usage(finishes: Sequence[common_pb2.GenerationFinished]) -> common_pb2.Usage:
    """All choices' usage together: each choice is a generation of its own."""
    total = common_pb2.Usage()
    for f in finishes:
        total.input_tokens += f.usage.input_tokens
        total.output_tokens += f.usage.output_tokens
        total.cached_input_tokens += f.usage.cached_input_tokens
    return total


def sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


@dataclass
class Choice:
    """One generation's whole reply."""

    text: str
    finished: common_pb2.GenerationFinished
    logprobs: list[common_pb2.TokenLogprob] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # OpenAI's shape


@dataclass
class Shape:
    """One response's identity: chat or text completion, id, model, creation time, and
    whether it reports logprobs (`prompt_chars`: where legacy text offsets start)."""

    chat: bool
    started: common_pb2.GenerationStarted
    created: int = field(default_factory=lambda: int(time.time()))
    logprobs: bool = False
    prompt_chars: int = 0
    parallel_tool_calls: bool = True  # false: each choice's first tool call only

    @property
    def id(self) -> str:
        return ("chatcmpl-" if self.chat else "cmpl-") + self.started.request_id

    @property
    def model(self) -> str:
        return model_key(self.started.model, self.started.version)

    def _head(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            # Which worker served it: the closest thing to a fingerprint of the backend.
            "system_fingerprint": self.started.worker_id or None,
        }

    def logprobs_of(self, logprobs: Logprobs, offset: int = 0) -> dict[str, Any] | None:
        """`offset`: characters of this choice's text before these tokens (legacy)."""
        if not self.logprobs:
            return None
        if self.chat:
            return chat_logprobs(logprobs)
        return completion_logprobs(logprobs, self.prompt_chars + offset)

    def whole(self, choices: Sequence[Choice]) -> dict[str, Any]:
        out: list[dict[str, Any]] = []
        for index, c in enumerate(choices):
            choice: dict[str, Any] = {
                "index": index,
                "finish_reason": finish_reason(c.finished),
                "logprobs": self.logprobs_of(c.logprobs),
            }
            if self.chat:
                choice["message"] = {"role": "assistant", "content": c.text}
                if c.tool_calls:  # OpenAI sends no content beside calls unless there was some
                    choice["message"] = {
                        "role": "assistant",
                        "content": c.text or None,
                        "tool_calls": c.tool_calls,
                    }
            else:
                choice["text"] = c.text
            out.append(choice)
        obj = "chat.completion" if self.chat else "text_completion"
        total = total_usage([c.finished for c in choices])
        return {**self._head(obj), "choices": out, "usage": usage(total)}

    def chunk(
        self,
        text: str | None,
        reason: str | None = None,
        index: int = 0,
        logprobs: dict[str, Any] | None = None,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index, "finish_reason": reason, "logprobs": logprobs}
        if self.chat:
            delta: dict[str, Any] = {} if text is None else {"content": text}
            if text == "" and reason is None and not tool_calls:
                delta = {"role": "assistant", "content": ""}
            if tool_calls:
                delta = {"tool_calls": tool_calls, **({"content": text} if text else {})}
            choice["delta"] = delta
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice["text"] = text or ""
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, finishes: Sequence[common_pb2.GenerationFinished]) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(obj), "choices": [], "usage": usage(total_usage(finishes))}
