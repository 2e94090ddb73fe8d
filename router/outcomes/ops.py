"""GetRoutingStats and RecordFeedback as plain operations, shared by the gRPC service and
the HTTP front: mesh-wide through the registry when outcomes are shipped, this replica's
own figures and feedback book otherwise."""

from __future__ import annotations

import math

from modelyard.auth import current_caller
from modelyard.errors import FieldViolation, InvalidArgument, NotFound
from modelyard.v1 import router_pb2
from router.auth import OPERATOR_ROLE_NAME
from router.outcomes.mesh import MeshOutcomes
from router.relay.requests import MAX_REQUEST_ID_LENGTH
from router.stats import RoutingStats

MAX_FEEDBACK_SCORE = 1e6  # any scale a caller keeps consistent; not infinities
MAX_FEEDBACK_COMMENT_BYTES = 2048  # the registry's bound (OutcomeService.AttachFeedback)


class OutcomeOps:
    def __init__(self, stats: RoutingStats, mesh: MeshOutcomes | None = None) -> None:
        self.stats = stats
        self.mesh = mesh

    async def routing_stats(
        self, request: router_pb2.GetRoutingStatsRequest
    ) -> router_pb2.GetRoutingStatsResponse:
        if self.mesh is not None:
            return await self.mesh.routing_stats(request, self.stats)
        return self.stats.to_proto(request.model, request.route, request.window_seconds)

    async def record_feedback(
        self, request: router_pb2.RecordFeedbackRequest, *, time_left_s: float | None = None
    ) -> None:
        check_feedback(request)  # arguments first: a bad score is never NOT_FOUND
        client = scoring_client()
        if self.mesh is not None:
            await self.mesh.feedback(request, client, time_left_s=time_left_s)
            # This replica's own figures (its answer while the registry is away) too.
            self.stats.record_feedback(request.request_id, request.score, client)
            return
        if not self.stats.record_feedback(request.request_id, request.score, client):
            raise NotFound(
                f"request {request.request_id} is unknown, did not finish, is too old for "
                "feedback, or was already scored",
                reason="REQUEST_NOT_FOUND",
            )


def scoring_client() -> str:
    """Whose feedback this is: the caller's key (or certificate) name, as outcomes name
    the key that made a request; "" for an operator or an open router, who may score any
    request."""
    caller = current_caller()
    if caller is None or caller.role == OPERATOR_ROLE_NAME:
        return ""
    return caller.key_name or caller.identity


def check_feedback(request: router_pb2.RecordFeedbackRequest) -> None:
    bad: list[FieldViolation] = []
    if not request.request_id:
        bad.append(FieldViolation("request_id", "required"))
    elif len(request.request_id) > MAX_REQUEST_ID_LENGTH:
        bad.append(FieldViolation("request_id", f"at most {MAX_REQUEST_ID_LENGTH} characters"))
    if not (math.isfinite(request.score) and abs(request.score) <= MAX_FEEDBACK_SCORE):
        bad.append(
            FieldViolation("score", f"must be a finite number within ±{MAX_FEEDBACK_SCORE:g}")
        )
    if len(request.comment.encode()) > MAX_FEEDBACK_COMMENT_BYTES:
        bad.append(
            FieldViolation("comment", f"at most {MAX_FEEDBACK_COMMENT_BYTES} bytes of UTF-8")
        )
    if bad:
        raise InvalidArgument.for_violations(bad)
