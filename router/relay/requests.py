"""The client's request as the router's parts see it: its id, what the router decided
for one attempt, the scheduler's view and the worker's call."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TypedDict

from modelyard.auth import current_caller
from modelyard.errors import InvalidArgument
from modelyard.prefix import chain_of_request
from modelyard.tokens import estimate_prompt_tokens
from modelyard.v1 import common_pb2, model_pb2, router_pb2, worker_pb2
from modelyard.validation import check_generation
from router.catalog import Target
from router.client_policy import ClientPolicy
from router.scheduling.types import Request

MAX_REQUEST_ID_LENGTH = 128


def request_id_of(given: str) -> str:
    """The client's request id, or a fresh one; INVALID_ARGUMENT when too long."""
    if len(given) > MAX_REQUEST_ID_LENGTH:
        raise InvalidArgument.for_field(
            "request_id", f"at most {MAX_REQUEST_ID_LENGTH} characters, got {len(given)}"
        )
    return given or uuid.uuid4().hex


@dataclass(frozen=True)
class Intake:
    """A generation the router accepted to work on: its id and whose slot it takes."""

    request_id: str
    key: str  # the API key's name, for per-key admission; "" when none


def intake(request: router_pb2.GenerateRequest, policy: ClientPolicy) -> Intake:
    """Bad input is INVALID_ARGUMENT, a priority above the key's ceiling PERMISSION_DENIED,
    before any registry or worker call (Generate and PickWorker alike)."""
    check_generation(
        request.prompt, request.messages, request.sampling, request.tools, request.tool_choice
    )
    caller = current_caller()
    policy.check(request, caller)
    key = caller.key_name if caller is not None else ""
    return Intake(request_id_of(request.request_id), key)


@dataclass(frozen=True)
class Assignment:
    """What the router decided for one attempt. The router owns these facts and states
    them in GenerationStarted itself: it never relies on a worker echoing them back."""

    request_id: str
    attempt: int
    model: model_pb2.Model
    route: str = ""
    arm: str = ""
    output_ceiling: int = 0  # the route's and the API key's, for a request without max_tokens


def worker_request(
    request: router_pb2.GenerateRequest, assignment: Assignment
) -> worker_pb2.WorkerServiceGenerateRequest:
    return worker_pb2.WorkerServiceGenerateRequest(
        request_id=assignment.request_id,
        model=assignment.model,
        prompt=request.prompt,
        messages=request.messages,
        sampling=request.sampling,
        priority=request.priority,
        load_if_cold=True,
        route=assignment.route,
        arm=assignment.arm,
        attempt=assignment.attempt,
        tools=request.tools,
        tool_choice=request.tool_choice,
        max_output_tokens_ceiling=assignment.output_ceiling,
    )


class Hinted(TypedDict):
    """The scheduler's fields that come from a request's hints over the route's defaults."""

    objective: common_pb2.Objective.ValueType
    max_ttft_ms: float | None
    max_cost_per_1k: float | None
    required_tags: tuple[str, ...]
    min_context_length: int
    session_key: str


def hinted(hints: common_pb2.RoutingHints, target: Target) -> Hinted:
    return Hinted(
        objective=hints.objective or target.objective or common_pb2.OBJECTIVE_BALANCED,
        max_ttft_ms=hints.max_ttft_ms if hints.HasField("max_ttft_ms") else target.max_ttft_ms,
        max_cost_per_1k=(
            hints.max_cost_per_1k_tokens
            if hints.HasField("max_cost_per_1k_tokens")
            else target.max_cost_per_1k
        ),
        required_tags=tuple(hints.required_tags),
        min_context_length=hints.min_context_length,
        session_key=hints.session_key,
    )


def scheduling_request(
    request: router_pb2.GenerateRequest, request_id: str, target: Target
) -> Request:
    """The scheduler's view of a request: its hints, over the route's defaults."""
    return Request(
        request_id=request_id,
        chat=bool(request.messages),
        prompt_tokens=estimate_prompt_tokens(request.prompt, request.messages),
        max_tokens=request.sampling.max_tokens,
        **hinted(request.hints, target),
        tools=bool(request.tools),
        prefix=chain_of_request(request.prompt, request.messages),
    )


def check_context(req: Request, target: Target) -> None:
    """INVALID_ARGUMENT, naming the context length, when no model the request may go to
    (fallbacks included) has the context it needs: no worker could ever serve it. A model
    of unknown context (0) leaves the decision to the workers."""
    contexts = [m.capabilities.context_length for group in target.groups for m in group]
    if not contexts or 0 in contexts or req.context_needed <= max(contexts):
        return
    largest = max(contexts)
    if req.min_context_length > largest:
        field = "hints.min_context_length"
        need = f"asks for a context of {req.min_context_length} tokens"
    else:
        field = "sampling.max_tokens" if req.max_tokens >= largest else "prompt"
        output = f"max_tokens {req.max_tokens}" if req.max_tokens else "at least 1 output token"
        need = (
            f"needs about {req.context_needed} tokens of context (prompt about "
            f"{req.prompt_tokens} + {output})"
        )
    raise InvalidArgument.for_field(
        field,
        f"the request {need}, more than the largest context of {target.name}'s models "
        f"({largest} tokens); shorten the prompt or lower max_tokens",
    )
