"""OpenTelemetry GenAI semantic conventions, shared by the router's and the worker's
generation spans and metrics: attribute names, the operation of a request, its span name.

https://opentelemetry.io/docs/specs/semconv/gen-ai/ (gen_ai.* attributes and metrics).
Only values from the request's parameters and the catalogue go here, never prompt text,
artifact URIs or credentials.
"""

from __future__ import annotations

from typing import Any

from modelyard.v1 import common_pb2

# gen_ai.provider.name: who serves the model. A self-hosted mesh is its own provider; the
# engine that runs the model is `modelyard.engine`, not a provider (gen_ai.system, which
# the engine name once went into, is deprecated).
PROVIDER = "modelyard"
CHAT = "chat"
TEXT_COMPLETION = "text_completion"


def operation_name(has_messages: bool) -> str:
    """gen_ai.operation.name: chat for a message list, text_completion for a prompt."""
    return CHAT if has_messages else TEXT_COMPLETION


def span_name(operation: str, model: str) -> str:
    """The span name the conventions ask for: `{gen_ai.operation.name} {gen_ai.request.model}`."""
    return f"{operation} {model}" if model else operation


def request_attributes(operation: str, model: str) -> dict[str, Any]:
    return {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": PROVIDER,
        "gen_ai.request.model": model,
    }


def sampling_attributes(sampling: common_pb2.SamplingParams) -> dict[str, Any]:
    """gen_ai.request.* of the parameters the request sets (unset ones are left out)."""
    attributes: dict[str, Any] = {}
    if sampling.max_tokens:
        attributes["gen_ai.request.max_tokens"] = sampling.max_tokens
    if sampling.HasField("temperature"):
        attributes["gen_ai.request.temperature"] = sampling.temperature
    if sampling.HasField("top_p"):
        attributes["gen_ai.request.top_p"] = sampling.top_p
    if sampling.top_k:
        attributes["gen_ai.request.top_k"] = sampling.top_k
    if sampling.HasField("seed"):
        attributes["gen_ai.request.seed"] = sampling.seed
    if sampling.presence_penalty:
        attributes["gen_ai.request.presence_penalty"] = sampling.presence_penalty
    if sampling.frequency_penalty:
        attributes["gen_ai.request.frequency_penalty"] = sampling.frequency_penalty
    if sampling.stop:
        attributes["gen_ai.request.stop_sequences"] = list(sampling.stop)
    return attributes


def response_attributes(model: str, response_id: str) -> dict[str, Any]:
    """gen_ai.response.*: the model version that answered, the request's id as the response's."""
    return {"gen_ai.response.model": model, "gen_ai.response.id": response_id}


def usage_attributes(usage: common_pb2.Usage) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.usage.input_tokens": usage.input_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens,
    }
    if usage.cached_input_tokens:
        attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cached_input_tokens
    return attributes
