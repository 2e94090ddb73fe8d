"""The router's generation events -> OpenAI response objects and stream chunks."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from modelyard.refs import model_key
from modelyard.v1 import common_pb2

_FINISH = {
    common_pb2.FINISH_REASON_STOP: "stop",
    common_pb2.FINISH_REASON_STOP_SEQUENCE: "stop",
    common_pb2.FINISH_REASON_LENGTH: "length",
    common_pb2.FINISH_REASON_CONTEXT_LENGTH: "length",
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


def sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


@dataclass
class Shape:
    """One response's identity: chat or text completion, id, model, creation time."""

    chat: bool
    started: common_pb2.GenerationStarted
    created: int = field(default_factory=lambda: int(time.time()))

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

    def whole(self, text: str, finished: common_pb2.GenerationFinished) -> dict[str, Any]:
        reason = finish_reason(finished)
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": reason,
                "logprobs": None,
            }
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
            obj = "text_completion"
        return {**self._head(obj), "choices": [choice], "usage": usage(finished.usage)}

    def chunk(self, text: str | None, reason: str | None = None) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {} if text is None else {"content": text}
            if text == "" and reason is None:
                delta = {"role": "assistant", "content": ""}
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "finish_reason": reason,
                "logprobs": None,
            }
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, finished: common_pb2.GenerationFinished) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(obj), "choices": [], "usage": usage(finished.usage)}
