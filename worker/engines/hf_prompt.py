"""Prompt token ids for an EngineRequest, with a Hugging Face tokenizer (vLLM, transformers).

Chat uses the tokenizer's own template (`apply_chat_template`); a tokenizer without
one falls back to ChatML as the llama.cpp engine does.
"""

from __future__ import annotations

from typing import Any

from worker.engines.base import EngineRequest
from worker.engines.chat_template import ChatTemplate
from worker.engines.tool_prompt import hf_tools, hf_turn, plain_turns, takes_tools


class HfPrompter:
    def __init__(self, tokenizer: Any, *, model: str = "") -> None:
        self.tokenizer = tokenizer
        self._fallback: ChatTemplate | None = None
        if not getattr(tokenizer, "chat_template", None):
            self._fallback = ChatTemplate.from_metadata(
                {},
                bos_token=tokenizer.bos_token or "",
                eos_token=tokenizer.eos_token or "",
                model=model,
            )

    @property
    def has_chat_template(self) -> bool:
        return self._fallback is None

    def token_ids(self, req: EngineRequest) -> list[int]:
        if req.prompt_token_ids is not None:
            return [int(t) for t in req.prompt_token_ids]
        if req.messages:
            text = self.render_chat(req)
            # The template already wrote any special tokens it wants.
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return list(self.tokenizer(req.prompt)["input_ids"])

    def render_chat(self, req: EngineRequest) -> str:
        if self._fallback is not None:
            return self._fallback.render(req.messages, req.tools).text
        extra: dict[str, Any] = {}
        if takes_tools(str(self.tokenizer.chat_template)):
            turns = [hf_turn(m) for m in req.messages]
            if req.tools is not None and req.tools.tools:
                extra["tools"] = hf_tools(req.tools)
        else:  # tools and tool turns as plain text turns
            turns = [hf_turn(m) for m in plain_turns(req.messages, req.tools)]
        text = self.tokenizer.apply_chat_template(
            turns, add_generation_prompt=True, tokenize=False, **extra
        )
        return str(text)
