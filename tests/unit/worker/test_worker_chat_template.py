"""Chat rendering with the model's own template, and the ChatML fallback."""

from __future__ import annotations

import logging

import pytest

from modelyard.errors import InvalidArgument
from worker.engines.base import ChatTurn
from worker.engines.chat_template import CHATML_TEMPLATE, METADATA_KEY, ChatTemplate

MESSAGES = [ChatTurn("system", "Be brief."), ChatTurn("user", "Hi")]


def test_chatml_renders_every_turn_and_the_generation_prompt() -> None:
    rendered = ChatTemplate(CHATML_TEMPLATE).render(MESSAGES)
    assert rendered.text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert not rendered.starts_with_bos


def test_the_model_template_gets_bos_and_eos_tokens() -> None:
    source = (
        "{{ bos_token }}{% for m in messages %}"
        "[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}"
    )
    template = ChatTemplate.from_metadata({METADATA_KEY: source}, bos_token="<s>", eos_token="</s>")
    rendered = template.render(MESSAGES)
    assert rendered.text == "<s>[system] Be brief.</s>[user] Hi</s>"
    assert rendered.starts_with_bos
    assert not template.is_fallback


def test_a_model_without_a_template_falls_back_to_chatml_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="worker.engines.chat_template"):
        template = ChatTemplate.from_metadata({}, bos_token="", eos_token="", model="base@1")
    assert template.is_fallback
    assert template.render(MESSAGES).text.endswith("<|im_start|>assistant\n")
    assert "base@1 has no chat template" in caplog.text


def test_a_template_that_does_not_compile_falls_back_to_chatml() -> None:
    template = ChatTemplate.from_metadata(
        {METADATA_KEY: "{% for m in messages %}"}, bos_token="", eos_token=""
    )
    assert template.is_fallback


def test_a_template_rejecting_the_conversation_is_invalid_argument_on_messages() -> None:
    source = "{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}{% endif %}"
    with pytest.raises(InvalidArgument) as err:
        ChatTemplate(source).render(MESSAGES)
    assert err.value.violations[0].field == "messages"
    assert "user first" in err.value.message


def test_the_sandbox_refuses_unsafe_attribute_access() -> None:
    source = "{{ messages.__class__.__mro__ }}"
    with pytest.raises(InvalidArgument):
        ChatTemplate(source).render(MESSAGES)
