"""A finished request, as the router's stats see it, turned into the registry's Outcome."""

from __future__ import annotations

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from modelyard.v1 import outcomes_pb2
from router.stats import Outcome

_CODES: dict[str, int] = {code.name: int(code.value[0]) for code in grpc.StatusCode}
_UNKNOWN: int = _CODES["UNKNOWN"]


def status_code(name: str) -> int:
    """The numeric gRPC code of a name such as "UNAVAILABLE" (UNKNOWN for others)."""
    return _CODES.get(name, _UNKNOWN)


def to_proto(
    request_id: str,
    outcome: Outcome,
    *,
    router_id: str,
    finished_at_s: float,
    worker: str = "",
    code: str = "OK",
) -> outcomes_pb2.Outcome:
    stamp = Timestamp()
    stamp.FromMilliseconds(int(finished_at_s * 1000))
    usage = outcome.usage
    return outcomes_pb2.Outcome(
        request_id=request_id,
        router_id=router_id,
        finished_at=stamp,
        model=outcome.model,
        version=outcome.version,
        route=outcome.route,
        arm=outcome.arm,
        attempt=outcome.attempt,
        worker_id=worker,
        client=outcome.client,
        status_code=0 if outcome.ok else status_code(code),
        input_tokens=usage.input_tokens if usage is not None else 0,
        output_tokens=usage.output_tokens if usage is not None else 0,
        cached_input_tokens=usage.cached_input_tokens if usage is not None else 0,
        cost_usd=max(outcome.cost_usd, 0.0),
        ttft_ms=max(outcome.ttft_ms or 0.0, 0.0),
        total_ms=max(outcome.total_ms or 0.0, 0.0),
        cached=outcome.cached,
    )
