"""OpenAI request bodies as pydantic models: every parameter the SDK knows (router/openai/
params.py says what becomes of each) plus the vLLM-style extras, typed strictly.

JSON allows what protobuf and the router cannot take: integers of any size, floats that
overflow, strings with unpaired surrogate escapes ("\\ud800"), any type anywhere. Each is
refused here, at the edge, as a 400 naming the parameter ("messages[0].role"), rather than
surfacing as a 500 from deep inside. Unknown keys are kept (`model_extra`) for the caller
to refuse or ignore.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from router.openai.errors import OpenAIError, invalid

INT32_MAX = 2**31 - 1
UINT64_MAX = 2**64 - 1
TOOL_CHOICES = ("none", "auto", "required")
MAX_N = 8  # choices per request: each is a generation of its own


def _unicode(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise PydanticCustomError(
            "unicode",
            "is not valid Unicode (an unpaired surrogate at character {at})",
            {"at": err.start},
        ) from None
    return value


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _one_prompt(value: Any) -> Any:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    if isinstance(value, list):
        raise PydanticCustomError(
            "one_prompt", "must be one string: arrays of prompts or of tokens are not supported yet"
        )
    return value


def _text_parts(value: Any) -> Any:
    return [{"type": "text", "text": value}] if isinstance(value, str) else value


def _tool_choice(value: Any) -> Any:
    if value is None or isinstance(value, dict) or value in TOOL_CHOICES:
        return value
    raise PydanticCustomError(
        "tool_choice", "must be one of {known} or an object", {"known": ", ".join(TOOL_CHOICES)}
    )


Text = Annotated[str, AfterValidator(_unicode)]
Number = Annotated[float, Field(allow_inf_nan=False)]
Positive32 = Annotated[int, Field(ge=1, le=INT32_MAX)]
Texts = Annotated[list[Text], BeforeValidator(_one_or_many)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class ContentPart(_Strict):
    type: Literal["text"]  # images, audio and files are not supported yet
    text: Text


class CalledFunction(_Strict):
    name: Text
    arguments: Text  # the text of a JSON object


class MessageToolCall(_Strict):
    id: Text
    type: Literal["function"]
    function: CalledFunction


class Message(_Strict):
    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: Annotated[list[ContentPart], BeforeValidator(_text_parts)] | None = None
    name: Text | None = None
    tool_calls: list[MessageToolCall] | None = None  # role assistant
    tool_call_id: Text | None = None  # role tool


class FunctionDefinition(_Strict):
    name: Text
    description: Text | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class ChosenFunction(_Strict):
    name: Text


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: ChosenFunction


class StreamOptions(_Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None  # chunks are never padded: true is refused


class JsonSchema(_Strict):
    name: Text | None = None
    description: Text | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None  # constrained decoding is always strict


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None


# A choice list becomes one regex of escaped alternatives (16 KiB at most in all).
MAX_CHOICES = 256
Choice = Annotated[Text, Field(min_length=1)]
Choices = Annotated[list[Choice], Field(min_length=1, max_length=MAX_CHOICES)]


def _schema_value(value: Any) -> Any:
    if isinstance(value, dict) or (isinstance(value, str) and _unicode(value) is not None):
        return value
    raise ValueError("must be a JSON Schema: an object, or its JSON text")


# One type rather than a union, so an error's location is the parameter's own name.
SchemaValue = Annotated[Any, AfterValidator(_schema_value)]


class StructuredOutputs(_Strict):
    """vLLM's `structured_outputs` extra: the keys modelyard honours (the others, such as
    `structural_tag`, are kept as extras and refused by name)."""

    regex: Text | None = None
    grammar: Text | None = None
    choice: Choices | None = None
    json_: SchemaValue | None = Field(default=None, alias="json")


class _Body(_Strict):
    """The parameters of both endpoints."""

    model: Text
    max_tokens: Positive32 | None = None
    temperature: Number | None = None
    top_p: Number | None = None
    presence_penalty: Number | None = None
    frequency_penalty: Number | None = None
    stop: Texts | None = None
    seed: Annotated[int, Field(ge=0, le=UINT64_MAX)] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: Text | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
    logit_bias: dict[str, Number] | None = None
    # vLLM-style extras: -1 (vLLM's "off") and 0 both disable top_k.
    top_k: Annotated[int, Field(ge=-1, le=INT32_MAX)] | None = None
    min_p: Number | None = None
    repetition_penalty: Number | None = None
    # vLLM's structured outputs, and its older names of the same constraints.
    structured_outputs: StructuredOutputs | None = None
    guided_regex: Text | None = None
    guided_grammar: Text | None = None
    guided_choice: Choices | None = None
    guided_json: SchemaValue | None = None


class ChatBody(_Body):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Positive32 | None = None
    safety_identifier: Text | None = None
    prompt_cache_key: Text | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: Annotated[Any, AfterValidator(_tool_choice)] = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: ResponseFormat | None = None
    audio: Any = None
    modalities: list[Any] | None = None
    prediction: Any = None
    web_search_options: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    service_tier: Any = None
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    moderation: Any = None
    prompt_cache_retention: Any = None
    prompt_cache_options: Any = None


class CompletionBody(_Body):
    prompt: Annotated[Text, BeforeValidator(_one_prompt)]
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    best_of: Positive32 | None = None
    echo: bool | None = None
    suffix: Text | None = None


B = TypeVar("B", bound=_Body)

# Pydantic's wording ("Input should be ...") -> the front's ("'param' must be ...").
_MESSAGES = {
    "missing": "is required",
    "too_short": "must not be empty",
    "model_type": "must be an object",
    "dict_type": "must be an object",
    "list_type": "must be an array",
    "float_type": "must be a finite number",
    "finite_number": "must be a finite number",
}


def parse(model: type[B], body: dict[str, Any]) -> B:
    """`body` as `model`, or the 400 of its first fault, naming the parameter."""
    try:
        return model.model_validate(body)
    except ValidationError as err:
        raise _first_fault(err) from None


def _first_fault(err: ValidationError) -> OpenAIError:
    fault = err.errors(include_url=False, include_input=False)[0]
    param = param_of(fault["loc"])
    if param == "stop" and fault["type"] == "list_type":
        return invalid("'stop' must be a string or an array of strings", "stop")
    text = _MESSAGES.get(fault["type"]) or _reworded(fault["msg"])
    return invalid(f"'{param}' {text}", param)


def _reworded(message: str) -> str:
    """Pydantic's message without its subject: never the client's value, nor library text
    beyond what it expected."""
    for prefix, replacement in (("Input should be", "must be"), ("Value error, ", "")):
        if message.startswith(prefix):
            return replacement + message[len(prefix) :]
    return message[:1].lower() + message[1:]


def param_of(loc: tuple[int | str, ...]) -> str:
    """("messages", 0, "role") -> "messages[0].role"."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text
