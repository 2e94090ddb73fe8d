"""POST /v1/feedback and GET /v1/stats on the HTTP front: the router's RecordFeedback and
GetRoutingStats for callers that speak HTTP only (behind the same API-key check as the
other endpoints, which Admission makes before any body is read).

Bodies and query parameters are validated by pydantic and bounded (the body size by
Admission, the comment by the registry's 2 KiB); errors come in OpenAI's shape.
"""

from __future__ import annotations

from typing import Any, Protocol

from google.protobuf.json_format import MessageToDict
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelyard.durations import parse_duration
from modelyard.errors import ModelyardError
from modelyard.v1 import router_pb2
from router.openai.errors import from_error, invalid

FEEDBACK = "/v1/feedback"
STATS = "/v1/stats"


class StatsOperations(Protocol):
    """What these endpoints need of the router (router.outcomes.ops.OutcomeOps)."""

    async def routing_stats(
        self, request: router_pb2.GetRoutingStatsRequest
    ) -> router_pb2.GetRoutingStatsResponse: ...

    async def record_feedback(
        self, request: router_pb2.RecordFeedbackRequest, *, time_left_s: float | None = None
    ) -> None: ...


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    request_id: str = Field(min_length=1, max_length=128)
    score: float = Field(ge=-1e6, le=1e6, allow_inf_nan=False)
    comment: str = Field(default="", max_length=2048)


def outcome_routes(ops: StatsOperations, timeout_s: float) -> list[Route]:
    async def feedback(request: Request) -> Response:
        raw = await request.body()
        try:
            body = FeedbackBody.model_validate_json(raw)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or None
            raise invalid(f"{where or 'body'}: {first['msg']}", where) from None
        grpc_request = router_pb2.RecordFeedbackRequest(
            request_id=body.request_id, score=body.score, comment=body.comment
        )
        try:
            await ops.record_feedback(grpc_request, time_left_s=timeout_s)
        except ModelyardError as err:
            raise from_error(err) from err
        return JSONResponse({"object": "feedback", "request_id": body.request_id})

    async def stats(request: Request) -> Response:
        query = request.query_params
        unknown = set(query) - {"model", "route", "since"}
        if unknown:
            raise invalid(f"unknown query parameter {sorted(unknown)[0]!r}", sorted(unknown)[0])
        model, route = query.get("model", ""), query.get("route", "")
        if len(model) > 256 or len(route) > 128:
            raise invalid("model or route name too long")
        grpc_request = router_pb2.GetRoutingStatsRequest(
            model=model, route=route, window_seconds=_window(query.get("since", ""))
        )
        try:
            reply = await ops.routing_stats(grpc_request)
        except ModelyardError as err:
            raise from_error(err) from err
        body: dict[str, Any] = MessageToDict(
            reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        return JSONResponse({"object": "routing_stats", **body})

    return [
        Route(FEEDBACK, feedback, methods=["POST"]),
        Route(STATS, stats, methods=["GET"]),
    ]


def _window(since: str) -> int:
    """Seconds in "30s", "15m", "1h", "7d" (empty: everything retained)."""
    if not since:
        return 0
    try:
        return parse_duration(since)
    except ValueError as err:
        raise invalid(f"since: {err}", "since") from None
