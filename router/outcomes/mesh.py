"""Mesh-wide stats and feedback: what GetRoutingStats and RecordFeedback do when the
router ships its outcomes to the registry."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc

from modelyard.errors import NotFound, Unavailable, from_rpc_error
from modelyard.v1 import outcomes_pb2, outcomes_pb2_grpc, router_pb2
from router.outcomes.convert import to_proto
from router.outcomes.shipper import OutcomeShipper
from router.stats import Outcome, RoutingStats

log = logging.getLogger(__name__)


class MeshOutcomes:
    """`writer` carries the outcome-writer token (RecordOutcomes, AttachFeedback), `reader`
    the registry reader token (QueryOutcomeStats)."""

    def __init__(
        self,
        writer: outcomes_pb2_grpc.OutcomeServiceAsyncStub,
        reader: outcomes_pb2_grpc.OutcomeServiceAsyncStub,
        shipper: OutcomeShipper,
        *,
        router_id: str,
        reference_usd_per_1k: float = 0.0,
        call_timeout_s: float = 2.0,
        feedback_wait_s: float = 3.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._writer = writer
        self._reader = reader
        self.shipper = shipper
        self._router_id = router_id
        self._reference = reference_usd_per_1k
        self._timeout_s = call_timeout_s
        # GetRoutingStats has its local answer to fall back on: it does not wait long.
        self._stats_timeout_s = min(call_timeout_s, 2.0)
        self._feedback_wait_s = feedback_wait_s
        self._clock = clock

    def record(
        self, request_id: str, outcome: Outcome, *, worker: str = "", code: str = "OK"
    ) -> None:
        """Buffer one finished request's outcome: never blocks, never fails the request."""
        self.shipper.add(
            to_proto(
                request_id,
                outcome,
                router_id=self._router_id,
                finished_at_s=self._clock(),
                worker=worker,
                code=code,
            )
        )

    async def routing_stats(
        self, request: router_pb2.GetRoutingStatsRequest, local: RoutingStats
    ) -> router_pb2.GetRoutingStatsResponse:
        """The mesh's figures from the registry; this replica's own when it cannot answer."""
        # This replica's latest outcomes first, so a caller sees its own requests counted.
        await self.shipper.flush(timeout_s=min(0.5, self._timeout_s / 2))
        query = outcomes_pb2.QueryOutcomeStatsRequest(
            model=request.model, route=request.route, window_seconds=request.window_seconds
        )
        try:
            found = await self._reader.QueryOutcomeStats(query, timeout=self._stats_timeout_s)
        except grpc.aio.AioRpcError as err:
            log.info("mesh stats unavailable (%s): answering from this replica", err.code().name)
            reply = local.to_proto(request.model, request.route, request.window_seconds)
            reply.outcomes_dropped = self.shipper.dropped
            return reply
        reply = router_pb2.GetRoutingStatsResponse(
            models=found.models,
            arms=found.arms,
            mesh_wide=True,
            outcomes_dropped=self.shipper.dropped,
            window_seconds=request.window_seconds,
        )
        for traffic in (*(m.traffic for m in reply.models), *(a.traffic for a in reply.arms)):
            self._fill_savings(traffic)
        return reply

    async def feedback(
        self,
        request: router_pb2.RecordFeedbackRequest,
        client: str = "",
        *,
        time_left_s: float | None = None,
    ) -> None:
        """Attach the score and comment in the registry, whichever replica served it, as
        key `client` (router/outcomes/ops.py); `time_left_s`: the caller's deadline, which
        the NOT_FOUND retries respect."""
        await self.shipper.flush(request.request_id, timeout_s=self._timeout_s)
        attach = outcomes_pb2.AttachFeedbackRequest(
            request_id=request.request_id,
            score=request.score,
            comment=request.comment,
            client=client,
        )
        # Another replica may still buffer the outcome (it ships every interval): a
        # NOT_FOUND is retried until the wait is over.
        wait_s = self._feedback_wait_s
        if time_left_s is not None:
            wait_s = min(wait_s, time_left_s - self._timeout_s)
        give_up = time.monotonic() + wait_s
        pause = min(0.2, self.shipper.interval_s / 4)
        while True:
            try:
                await self._writer.AttachFeedback(attach, timeout=self._timeout_s)
                return
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND and time.monotonic() < give_up:
                    await asyncio.sleep(pause)
                    continue
                raise _feedback_error(err) from None

    def _fill_savings(self, traffic: router_pb2.TrafficStats) -> None:
        if self._reference:
            tokens = traffic.input_tokens + traffic.output_tokens
            traffic.savings_usd = self._reference * tokens / 1000 - traffic.cost_usd


def _feedback_error(err: grpc.aio.AioRpcError) -> Exception:
    code = err.code()
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(err.details() or "request not found", reason="REQUEST_NOT_FOUND")
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        log.warning("feedback not stored: the registry refused the outcome-writer credential")
        return Unavailable(
            "feedback could not be stored: the registry refused this router's outcome-writer "
            "credential (MODELYARD_ROUTER_OUTCOME_TOKEN); an operator must fix it"
        )
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        log.warning("feedback not stored: the registry answered %s", code.name)
        return Unavailable(
            "feedback could not be stored: the registry that keeps it is unreachable "
            "right now; retry later",
            retry_after_s=1.0,
        )
    return from_rpc_error(err)  # INVALID_ARGUMENT, ALREADY_EXISTS: the caller's to fix
