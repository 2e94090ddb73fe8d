"""Render chat messages into a prompt with the model's own Jinja chat template.

Templates come from GGUF metadata (`tokenizer.chat_template`) and run in
Jinja's immutable sandbox with the variables Hugging Face templates expect.
A model without a template falls back to ChatML, with a warning at load time.
Tools and tool turns are rendered by the template itself when it takes `tools`, else as
plain turns (worker.engines.tool_prompt).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from modelyard.errors import InvalidArgument
from worker.engines.base import ChatTurn, ToolPrompt
from worker.engines.tool_prompt import hf_tools, hf_turn, plain_turns, takes_tools

log = logging.getLogger(__name__)

METADATA_KEY = "tokenizer.chat_template"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    # True when the template wrote the BOS token itself, so tokenization must not add another.
    starts_with_bos: bool


def _raise_exception(message: str) -> None:
    # Templates call raise_exception() to reject conversations they cannot render.
    raise InvalidArgument.for_field("messages", f"the model's chat template refused: {message}")


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


class ChatTemplate:
    """One compiled template plus the special-token strings it may reference."""

    def __init__(
        self, source: str, *, bos_token: str = "", eos_token: str = "", is_fallback: bool = False
    ) -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as err:
            raise ValueError(f"invalid chat template: {err}") from err
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.is_fallback = is_fallback
        self.takes_tools = takes_tools(source)

    @classmethod
    def from_metadata(
        cls, metadata: Mapping[str, str], *, bos_token: str, eos_token: str, model: str = ""
    ) -> ChatTemplate:
        """The model's template, or ChatML (logged) when it has none or it does not compile."""
        source = metadata.get(METADATA_KEY, "")
        if source:
            try:
                return cls(source, bos_token=bos_token, eos_token=eos_token)
            except ValueError as err:
                log.warning("model %s: %s; falling back to ChatML", model or "?", err)
        else:
            log.warning("model %s has no chat template; chat requests use ChatML", model or "?")
        return cls(CHATML_TEMPLATE, bos_token=bos_token, eos_token=eos_token, is_fallback=True)

    def render(
        self, messages: Sequence[ChatTurn], tools: ToolPrompt | None = None
    ) -> RenderedPrompt:
        extra: dict[str, Any] = {}
        if self.takes_tools:
            turns = [hf_turn(m) for m in messages]
            if tools is not None and tools.tools:
                extra["tools"] = hf_tools(tools)
        else:
            turns = [hf_turn(m) for m in plain_turns(messages, tools)]
        try:
            text = self._template.render(
                messages=turns,
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        except jinja2.TemplateError as err:
            raise InvalidArgument.for_field(
                "messages", f"cannot render the model's chat template: {err}"
            ) from err
        starts_with_bos = bool(self.bos_token) and text.startswith(self.bos_token)
        return RenderedPrompt(text, starts_with_bos)
