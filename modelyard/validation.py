"""Validation of generation input, shared by the router (fail fast) and the worker."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

from modelyard.errors import FieldViolation, InvalidArgument
from modelyard.tool_validation import tool_call_chars, tool_violations, turn_violations
from modelyard.v1 import common_pb2

MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 256
MAX_MESSAGES = 4096
# The prompt, or all message contents together: about 500k tokens of English, more than
# any context served here holds (the transport bounds whole messages at 4 MiB by default).
MAX_PROMPT_CHARS = 2 * 1024 * 1024
MAX_VIOLATIONS = 20  # reported per request: a million bad fields cost no more than 20
CHAT_ROLES = frozenset({"system", "user", "assistant", "tool"})
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 300
LOGIT_BIAS_RANGE = 100.0
MAX_JSON_SCHEMA_BYTES = 64 * 1024
MAX_REGEX_BYTES = 16 * 1024
MAX_GRAMMAR_BYTES = 16 * 1024


def sampling_violations(
    s: common_pb2.SamplingParams, prefix: str = "sampling"
) -> list[FieldViolation]:
    out: list[FieldViolation] = []

    def bad(field: str, description: str) -> None:
        out.append(FieldViolation(f"{prefix}.{field}", description))

    if s.max_tokens < 0:
        bad("max_tokens", f"must be >= 0 (0 means the default), got {s.max_tokens}")
    if s.HasField("temperature") and not (s.temperature >= 0 and math.isfinite(s.temperature)):
        bad("temperature", f"must be >= 0 (0 is greedy), got {s.temperature}")
    if s.HasField("top_p") and not (0 < s.top_p <= 1):
        bad("top_p", f"must be in (0, 1], got {s.top_p}")
    if s.top_k < 0:
        bad("top_k", f"must be >= 0 (0 disables), got {s.top_k}")
    if not (0 <= s.min_p <= 1):
        bad("min_p", f"must be in [0, 1], got {s.min_p}")
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(s, name)
        if not (-2 <= value <= 2):
            bad(name, f"must be in [-2, 2], got {value}")
    if s.HasField("repetition_penalty") and not s.repetition_penalty > 0:
        bad("repetition_penalty", f"must be > 0, got {s.repetition_penalty}")
    return (
        out
        + _stop_violations(s.stop, prefix)
        + _logprob_violations(s, prefix)
        + _format_violations(s.response_format, f"{prefix}.response_format")
    )


def _logprob_violations(s: common_pb2.SamplingParams, prefix: str) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    if s.top_logprobs > MAX_TOP_LOGPROBS:
        out.append(
            FieldViolation(
                f"{prefix}.top_logprobs",
                f"must be in [0, {MAX_TOP_LOGPROBS}], got {s.top_logprobs}",
            )
        )
    elif s.top_logprobs and not s.logprobs:
        out.append(FieldViolation(f"{prefix}.top_logprobs", "set logprobs to ask for them"))
    if len(s.logit_bias) > MAX_LOGIT_BIAS:
        # Decided on the count alone: nothing below walks a map this long.
        many = f"at most {MAX_LOGIT_BIAS} entries, got {len(s.logit_bias)}"
        return [*out, FieldViolation(f"{prefix}.logit_bias", many)]
    for token, bias in sorted(s.logit_bias.items()):
        if not -LOGIT_BIAS_RANGE <= bias <= LOGIT_BIAS_RANGE:  # NaN fails too
            out.append(
                FieldViolation(
                    f"{prefix}.logit_bias[{token}]",
                    f"must be in [-{LOGIT_BIAS_RANGE:g}, {LOGIT_BIAS_RANGE:g}], got {bias}",
                )
            )
            if len(out) >= MAX_VIOLATIONS:
                break
    return out


def _format_violations(f: common_pb2.ResponseFormat, prefix: str) -> list[FieldViolation]:
    """The field the format's type needs is set and within its limit; the others are empty.
    Whether an engine can enforce the schema, pattern or grammar is the engine's check."""
    if f.type not in common_pb2.ResponseFormatType.values():
        return [FieldViolation(f"{prefix}.type", f"unknown response format type {f.type}")]
    out: list[FieldViolation] = []
    # Each field belongs to one type: sent with another it would be ignored, so refuse it.
    for name, owner, needs in (
        ("json_schema", common_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, "JSON_SCHEMA"),
        ("regex", common_pb2.RESPONSE_FORMAT_TYPE_REGEX, "REGEX"),
        ("grammar", common_pb2.RESPONSE_FORMAT_TYPE_GRAMMAR, "GRAMMAR"),
        ("grammar_syntax", common_pb2.RESPONSE_FORMAT_TYPE_GRAMMAR, "GRAMMAR"),
    ):
        if f.type != owner and getattr(f, name):
            out.append(FieldViolation(f"{prefix}.{name}", f"needs type {needs}"))
    if out:
        return out
    if f.type == common_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        return _schema_violations(f.json_schema, f"{prefix}.json_schema")
    if f.type == common_pb2.RESPONSE_FORMAT_TYPE_REGEX:
        return _regex_violations(f.regex, f"{prefix}.regex")
    if f.type == common_pb2.RESPONSE_FORMAT_TYPE_GRAMMAR:
        return _grammar_violations(f, prefix)
    return []


def _text_violation(text: str, field: str, limit: int, what: str) -> FieldViolation | None:
    if not text:
        return FieldViolation(field, f"{what} is required with this type")
    size = len(text.encode("utf-8"))
    if size > limit:
        return FieldViolation(field, f"at most {limit} bytes, got {size}")
    return None


def _schema_violations(text: str, field: str) -> list[FieldViolation]:
    size = len(text.encode("utf-8"))
    if size > MAX_JSON_SCHEMA_BYTES:
        return [FieldViolation(field, f"at most {MAX_JSON_SCHEMA_BYTES} bytes, got {size}")]
    try:
        schema = json.loads(text)
    except ValueError as err:  # no library text beyond json's own position message
        return [FieldViolation(field, f"is not JSON: {err}")]
    if not isinstance(schema, dict):
        return [FieldViolation(field, "must be a JSON object (a JSON Schema)")]
    return []


def _regex_violations(text: str, field: str) -> list[FieldViolation]:
    bad = _text_violation(text, field, MAX_REGEX_BYTES, "a regular expression")
    if bad is not None:
        return [bad]
    # A first check in Python's dialect; the engine's matcher has the last word.
    try:
        re.compile(text)
    except (re.error, RecursionError, OverflowError) as err:
        where = f" at position {err.pos}" if isinstance(err, re.error) and err.pos else ""
        reason = err.msg if isinstance(err, re.error) else "is too deeply nested"
        return [FieldViolation(field, f"is not a valid regular expression: {reason}{where}")]
    return []


_COMMENT = re.compile(r"(#|//).*$")


def looks_like_gbnf(grammar: str) -> bool:
    """vLLM's rule for telling GBNF from Lark (it is not told which): a line that, without
    its `#` or `//` comment, defines a rule with `::=` makes the grammar GBNF."""
    return any("::=" in _COMMENT.sub("", line) for line in grammar.split("\n"))


def _grammar_violations(f: common_pb2.ResponseFormat, prefix: str) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    bad = _text_violation(f.grammar, f"{prefix}.grammar", MAX_GRAMMAR_BYTES, "a grammar")
    if bad is not None:
        out.append(bad)
    known = set(common_pb2.GrammarSyntax.values()) - {common_pb2.GRAMMAR_SYNTAX_UNSPECIFIED}
    if f.grammar_syntax not in known:
        out.append(
            FieldViolation(
                f"{prefix}.grammar_syntax",
                f"must be GBNF or LARK, got {f.grammar_syntax}",
            )
        )
    return out


def _stop_violations(stop: Sequence[str], prefix: str) -> list[FieldViolation]:
    field = f"{prefix}.stop"
    if len(stop) > MAX_STOP_SEQUENCES:
        return [
            FieldViolation(field, f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(stop)}")
        ]
    out: list[FieldViolation] = []
    if any(not seq for seq in stop):
        out.append(FieldViolation(field, "stop sequences must be non-empty"))
    if any(len(seq) > MAX_STOP_CHARS for seq in stop):
        out.append(
            FieldViolation(field, f"a stop sequence may have at most {MAX_STOP_CHARS} characters")
        )
    return out


def input_violations(
    prompt: str, messages: Sequence[common_pb2.ChatMessage]
) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    if prompt and messages:
        out.append(FieldViolation("prompt", "set either prompt or messages, not both"))
    elif not prompt and not messages:
        out.append(FieldViolation("prompt", "set a prompt or at least one chat message"))
    if len(messages) > MAX_MESSAGES:
        # Decided on the count alone: nothing below walks a list this long.
        out.append(
            FieldViolation("messages", f"at most {MAX_MESSAGES} messages, got {len(messages)}")
        )
        return out
    chars = len(prompt) + sum(len(m.content) + len(m.name) for m in messages)
    chars += tool_call_chars(messages)
    if chars > MAX_PROMPT_CHARS:
        field = "prompt" if prompt else "messages"
        out.append(
            FieldViolation(field, f"at most {MAX_PROMPT_CHARS} characters of input, got {chars}")
        )
    for i, m in enumerate(messages):
        if m.role not in CHAT_ROLES:
            out.append(
                FieldViolation(
                    f"messages[{i}].role",
                    f"must be one of {', '.join(sorted(CHAT_ROLES))}, got {m.role[:32]!r}",
                )
            )
            if len(out) >= MAX_VIOLATIONS:
                break
    return out + turn_violations(messages)


def check_generation(
    prompt: str,
    messages: Sequence[common_pb2.ChatMessage],
    sampling: common_pb2.SamplingParams,
    tools: Sequence[common_pb2.ToolDefinition] = (),
    tool_choice: common_pb2.ToolChoice | None = None,
) -> None:
    """Raise INVALID_ARGUMENT listing every bad field of a generation request."""
    choice = tool_choice if tool_choice is not None else common_pb2.ToolChoice()
    violations = (
        input_violations(prompt, messages)
        + sampling_violations(sampling)
        + tool_violations(tools, choice, prompt)
    )
    if violations:
        raise InvalidArgument.for_violations(violations[:MAX_VIOLATIONS])


MAX_EMBED_INPUTS = 256
MAX_EMBED_INPUT_BYTES = 64 * 1024
MAX_EMBED_TOTAL_BYTES = 1024 * 1024
MAX_EMBED_DIMENSIONS = 65536


def embed_violations(
    inputs: Sequence[str], params: common_pb2.EmbeddingParams
) -> list[FieldViolation]:
    """Every bad field of an embedding batch (inputs counted in UTF-8 bytes)."""
    out: list[FieldViolation] = []
    if not 1 <= len(inputs) <= MAX_EMBED_INPUTS:
        out.append(FieldViolation("inputs", f"1 to {MAX_EMBED_INPUTS} texts, got {len(inputs)}"))
        if len(inputs) > MAX_EMBED_INPUTS:
            return out  # decided on the count alone: nothing walks a list this long
    total = 0
    for i, text in enumerate(inputs):
        size = len(text.encode("utf-8"))
        total += size
        if not text:
            out.append(FieldViolation(f"inputs[{i}]", "must not be empty"))
        elif size > MAX_EMBED_INPUT_BYTES:
            out.append(
                FieldViolation(f"inputs[{i}]", f"at most {MAX_EMBED_INPUT_BYTES} bytes, got {size}")
            )
        if len(out) >= MAX_VIOLATIONS:
            return out
    if total > MAX_EMBED_TOTAL_BYTES:
        out.append(
            FieldViolation("inputs", f"at most {MAX_EMBED_TOTAL_BYTES} bytes together, got {total}")
        )
    if params.dimensions > MAX_EMBED_DIMENSIONS:
        out.append(
            FieldViolation(
                "params.dimensions", f"at most {MAX_EMBED_DIMENSIONS}, got {params.dimensions}"
            )
        )
    return out


def check_embed(inputs: Sequence[str], params: common_pb2.EmbeddingParams) -> None:
    """Raise INVALID_ARGUMENT listing every bad field of an embedding request."""
    violations = embed_violations(inputs, params)
    if violations:
        raise InvalidArgument.for_violations(violations[:MAX_VIOLATIONS])
