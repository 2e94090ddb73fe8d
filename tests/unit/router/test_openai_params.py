"""Every OpenAI request parameter the installed SDK knows has a decision: honoured (it
changes the router's request) or unsupported (a 400 naming it, unless its value asks for
nothing). A new SDK key without a decision fails here."""

from __future__ import annotations

import json
from typing import Any

import pytest

from router.openai import params
from router.openai.bodies import ChatBody, CompletionBody
from router.openai.errors import OpenAIError
from router.openai.translate import Translated, chat_request, completion_request
from tests.openai_cases import (
    CHAT_HONOURED,
    CHAT_REFUSED,
    CHAT_SDK_KEYS,
    COMPLETION_HONOURED,
    COMPLETION_REFUSED,
    COMPLETION_SDK_KEYS,
    EXTRA,
    Honoured,
    Refused,
)

CHAT_BASE: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
COMPLETION_BASE: dict[str, Any] = {"model": "m", "prompt": "The"}


def test_every_sdk_key_has_exactly_one_decision_and_a_case() -> None:
    for sdk, honoured, unsupported, body, cases in (
        (CHAT_SDK_KEYS, params.CHAT_HONOURED, params.CHAT_UNSUPPORTED, ChatBody, CHAT_HONOURED),
        (
            COMPLETION_SDK_KEYS,
            params.COMPLETION_HONOURED,
            params.COMPLETION_UNSUPPORTED,
            CompletionBody,
            COMPLETION_HONOURED,
        ),
    ):
        assert not honoured & set(unsupported)
        assert honoured | set(unsupported) == sdk, "an SDK key without a decision (or gone)"
        assert set(body.model_fields) == sdk | params.EXTRA, "the body model must parse each"
        assert {c.param for c in cases} == honoured | params.EXTRA
    assert {c.param for c in CHAT_REFUSED} == set(params.CHAT_UNSUPPORTED)
    assert {c.param for c in COMPLETION_REFUSED} == set(params.COMPLETION_UNSUPPORTED)
    assert params.EXTRA == EXTRA


def _translate(chat: bool, body: dict[str, Any], **options: bool) -> Translated:
    return (chat_request if chat else completion_request)(body, **options)


HONOURED = [(True, c) for c in CHAT_HONOURED] + [(False, c) for c in COMPLETION_HONOURED]
REFUSED = [(True, c) for c in CHAT_REFUSED] + [(False, c) for c in COMPLETION_REFUSED]


def _ids(cases: list[tuple[bool, Honoured]] | list[tuple[bool, Refused]]) -> list[str]:
    return [("chat-" if chat else "completion-") + c.param for chat, c in cases]


@pytest.mark.parametrize(("chat", "case"), HONOURED, ids=_ids(HONOURED))
def test_an_honoured_parameter_changes_the_request(chat: bool, case: Honoured) -> None:
    base = CHAT_BASE if chat else COMPLETION_BASE
    translated = _translate(chat, {**base, **case.patch})
    if case.effect is None:
        return  # accepted; nothing in the request to show for it
    assert case.effect(translated), translated
    if case.patch:
        assert not case.effect(_translate(chat, base)), "the base request shows it already"


@pytest.mark.parametrize(("chat", "case"), REFUSED, ids=_ids(REFUSED))
def test_an_unsupported_parameter_is_a_400_naming_it(chat: bool, case: Refused) -> None:
    base = CHAT_BASE if chat else COMPLETION_BASE
    with pytest.raises(OpenAIError) as caught:
        _translate(chat, {**base, case.param: case.value})
    assert caught.value.status == 400
    assert caught.value.param == (case.where or case.param)
    assert "not supported yet" in caught.value.message
    if case.has_neutral:
        _translate(chat, {**base, case.param: case.neutral})
    _translate(chat, {**base, case.param: None})  # null is "not sent"


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completion"])
def test_unknown_parameters_are_a_400_unless_ignored(chat: bool) -> None:
    body = {**(CHAT_BASE if chat else COMPLETION_BASE), "guided_whitespace": "x", "mirostat": 2}
    with pytest.raises(OpenAIError) as caught:
        _translate(chat, body)
    assert (caught.value.status, caught.value.param) == (400, "guided_whitespace")
    ignored = _translate(chat, body, ignore_unknown=True).ignored
    assert ignored == ("guided_whitespace", "mirostat")


def test_nested_keys_that_ask_for_something_are_refused() -> None:
    tool_call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    cases = [
        ({"role": "user", "content": "hi", "cache_control": {"type": "x"}}, "cache_control"),
        (
            {"role": "assistant", "tool_calls": [{**tool_call, "extra": 1}]},
            "tool_calls[0].extra",
        ),
    ]
    for message, key in cases:
        with pytest.raises(OpenAIError) as caught:
            chat_request({**CHAT_BASE, "messages": [message]})
        assert caught.value.param == f"messages[0].{key}"
    image = {"type": "image_url", "image_url": {"url": "http://x"}}
    with pytest.raises(OpenAIError) as refused:
        chat_request({**CHAT_BASE, "messages": [{"role": "user", "content": [image]}]})
    assert refused.value.param == "messages[0].content[0].type"
    with pytest.raises(OpenAIError) as obfuscated:
        chat_request({**CHAT_BASE, "stream_options": {"include_obfuscation": True}})
    assert obfuscated.value.param == "stream_options.include_obfuscation"


def test_max_tokens_defaults() -> None:
    # Legacy completions: OpenAI's 16. Chat: unset, i.e. the router's default.
    assert completion_request(COMPLETION_BASE).request.sampling.max_tokens == 16
    assert chat_request(CHAT_BASE).request.sampling.max_tokens == 0


def test_structured_parameters_translate_and_bad_values_are_400() -> None:
    fmt = chat_request({**CHAT_BASE, "response_format": {"type": "json_object"}})
    assert fmt.request.sampling.response_format.type == 2  # RESPONSE_FORMAT_TYPE_JSON_OBJECT
    text = chat_request({**CHAT_BASE, "response_format": {"type": "text"}})
    assert not text.request.sampling.HasField("response_format")
    seeded = chat_request({**CHAT_BASE, "n": 3, "seed": 5}).requests()
    assert [r.sampling.seed for r in seeded] == [5, 6, 7]  # distinct choices, reproducible
    bad: list[tuple[dict[str, Any], str]] = [
        ({"n": 9}, "n"),
        ({"n": 0}, "n"),
        ({"logit_bias": {"the": 1}}, "logit_bias"),
        ({"logit_bias": {"5": "x"}}, "logit_bias.5"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.json_schema.schema",
        ),
        ({"response_format": {"type": "regex"}}, "response_format.type"),
    ]
    for patch, param in bad:
        with pytest.raises(OpenAIError) as caught:
            chat_request({**CHAT_BASE, **patch})
        assert (caught.value.status, caught.value.param) == (400, param), patch
    with pytest.raises(OpenAIError) as legacy:
        completion_request({**COMPLETION_BASE, "logprobs": 21})
    assert legacy.value.param == "logprobs"


def test_regex_and_grammar_extras_translate_and_conflicts_are_400() -> None:
    lark = chat_request({**CHAT_BASE, "structured_outputs": {"grammar": 'start: "a" | "b"'}})
    fmt = lark.request.sampling.response_format
    assert (fmt.type, fmt.grammar_syntax) == (5, 2)  # GRAMMAR, LARK: no "::=" rule
    assert lark.format_param == "structured_outputs.grammar"
    legacy = completion_request({**COMPLETION_BASE, "guided_regex": "[0-9]{2}"})
    assert legacy.request.sampling.response_format.regex == "[0-9]{2}"
    assert legacy.format_param == "guided_regex"
    assert chat_request(CHAT_BASE).format_param is None
    bad: list[tuple[dict[str, Any], str]] = [
        ({"structured_outputs": {"regex": "a", "grammar": "b"}}, "structured_outputs.grammar"),
        ({"structured_outputs": {"structural_tag": "x"}}, "structured_outputs.structural_tag"),
        ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
        ({"structured_outputs": {"choice": ["a", ""]}}, "structured_outputs.choice[1]"),
        ({"guided_choice": ["a"] * 257}, "guided_choice"),
        ({"structured_outputs": {"json": 5}}, "structured_outputs.json"),
        ({"guided_choice": ["a"], "guided_json": {}}, "guided_json"),
        ({"structured_outputs": {"regex": ""}}, "structured_outputs.regex"),
        ({"structured_outputs": {"regex": 5}}, "structured_outputs.regex"),
        ({"guided_regex": "a", "guided_grammar": "b"}, "guided_grammar"),
        ({"structured_outputs": {"regex": "a"}, "guided_regex": "a"}, "guided_regex"),
        (
            {"guided_regex": "a", "response_format": {"type": "json_object"}},
            "response_format",
        ),
    ]
    for patch, param in bad:
        with pytest.raises(OpenAIError) as caught:
            chat_request({**CHAT_BASE, **patch})
        assert (caught.value.status, caught.value.param) == (400, param), patch
    # A choice list is a regex of its escaped alternatives; json is a JSON schema.
    choice = chat_request({**CHAT_BASE, "structured_outputs": {"choice": ["a.b", "(c)"]}})
    assert choice.request.sampling.response_format.regex == r"a\.b|\(c\)"
    assert choice.format_param == "structured_outputs.choice"
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    for patch in ({"guided_json": schema}, {"structured_outputs": {"json": json.dumps(schema)}}):
        fmt = chat_request({**CHAT_BASE, **patch}).request.sampling.response_format
        assert (fmt.type, json.loads(fmt.json_schema)) == (3, schema)  # JSON_SCHEMA
    # response_format "text" asks for nothing, so it combines with a regex.
    both = chat_request({**CHAT_BASE, "guided_regex": "a", "response_format": {"type": "text"}})
    assert both.request.sampling.response_format.regex == "a"
