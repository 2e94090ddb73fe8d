"""RouterService over gRPC: validates, translates messages and delegates, nothing more."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from contextlib import aclosing
from typing import Any, TypeAlias

import grpc
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from grpc_status import rpc_status

from modelyard.errors import Unimplemented, grpc_errors
from modelyard.limits import ServerLimits
from modelyard.streaming import BoundedStream, CoalescingWriter
from modelyard.tool_validation import MAX_TOOL_CALLS
from modelyard.v1 import common_pb2, router_pb2, router_pb2_grpc
from router.accounting import Accounting
from router.api import RouterApi
from router.auth import SERVICE_NAME
from router.direct.desk import TicketDesk
from router.outcomes.ops import OutcomeOps
from router.relay import StreamBroken
from router.workers import WorkerPool

__all__ = ["SERVICE_NAME", "USAGE_METADATA_KEY", "RouterServicer", "add_to_server"]

# Trailing metadata that carries the partial Usage when a stream breaks mid-way.
USAGE_METADATA_KEY = "modelyard-usage-bin"

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(
        self,
        api: RouterApi,
        pool: WorkerPool,
        accounting: Accounting,
        limits: ServerLimits | None = None,
        outcomes: OutcomeOps | None = None,
        desk: TicketDesk | None = None,
    ) -> None:
        self._api = api
        self._desk = desk
        self._pool = pool
        self._acct = accounting
        self._limits = limits or ServerLimits()
        self.outcomes = outcomes or OutcomeOps(accounting.stats)

    @grpc_errors
    async def Embed(
        self, request: router_pb2.EmbedRequest, context: Context
    ) -> router_pb2.EmbedResponse:
        return await self._api.embed(request, timeout_s=context.time_remaining())

    @grpc_errors
    async def Generate(
        self, request: router_pb2.GenerateRequest, context: Context
    ) -> AsyncIterator[router_pb2.GenerateResponse]:
        # Written through `out` (modelyard.streaming: a yield cannot time a client that
        # stopped reading); its error closes the relay, which cancels the worker's call
        # and so frees the decode slot. The generator form stays for interceptors.
        # Deltas that wait on a slow client go out merged (CoalescingWriter).
        out = BoundedStream(context, self._limits, "router")
        writer: CoalescingWriter[router_pb2.GenerateResponse] = CoalescingWriter(out)
        try:
            async with out.bounded(), aclosing(self._events(request, context)) as events:
                try:
                    async for event in events:
                        writer.put(event)
                except StreamBroken as err:
                    await writer.flush()  # the tokens its usage counts reach the client first
                    await _abort_with_usage(context, err)
                await writer.flush()
        finally:
            writer.cancel()
        nothing: tuple[router_pb2.GenerateResponse, ...] = ()
        for event in nothing:
            yield event

    @grpc_errors
    async def Complete(
        self, request: router_pb2.CompleteRequest, context: Context
    ) -> router_pb2.CompleteResponse:
        # Same field numbers and meaning (see router.proto), so the bytes convert.
        generate = router_pb2.GenerateRequest.FromString(request.SerializeToString())
        try:
            async with aclosing(self._events(generate, context)) as events:
                return await _whole(events)
        except StreamBroken as err:
            await _abort_with_usage(context, err)
            raise  # abort raised already; this line is for the type checker

    @grpc_errors
    async def ListModels(
        self, request: router_pb2.RouterServiceListModelsRequest, context: Context
    ) -> router_pb2.RouterServiceListModelsResponse:
        return await self._api.list_models(timeout_s=context.time_remaining())

    @grpc_errors
    async def ListWorkers(
        self, request: router_pb2.ListWorkersRequest, context: Context
    ) -> router_pb2.ListWorkersResponse:
        infos = self._pool.infos()
        for info in infos:
            info.breaker = self._acct.breakers.state(info.address)
        return router_pb2.ListWorkersResponse(workers=infos)

    @grpc_errors
    async def GetRoutingStats(
        self, request: router_pb2.GetRoutingStatsRequest, context: Context
    ) -> router_pb2.GetRoutingStatsResponse:
        return await self.outcomes.routing_stats(request)

    @grpc_errors
    async def RecordFeedback(
        self, request: router_pb2.RecordFeedbackRequest, context: Context
    ) -> router_pb2.RecordFeedbackResponse:
        await self.outcomes.record_feedback(request, time_left_s=context.time_remaining())
        return router_pb2.RecordFeedbackResponse()

    @grpc_errors
    async def PickWorker(
        self, request: router_pb2.PickWorkerRequest, context: Context
    ) -> router_pb2.PickWorkerResponse:
        return await self._tickets().pick(request, timeout_s=context.time_remaining())

    @grpc_errors
    async def ReportOutcome(
        self, request: router_pb2.ReportOutcomeRequest, context: Context
    ) -> router_pb2.ReportOutcomeResponse:
        self._tickets().report(request)
        return router_pb2.ReportOutcomeResponse()

    @grpc_errors
    async def ReportOutcomes(
        self, request: router_pb2.ReportOutcomesRequest, context: Context
    ) -> router_pb2.ReportOutcomesResponse:
        return self._tickets().report_all(request.reports)

    def _tickets(self) -> TicketDesk:
        if self._desk is None:
            raise Unimplemented("this router issues no tickets")
        return self._desk

    async def _events(
        self, request: router_pb2.GenerateRequest, context: Context
    ) -> AsyncGenerator[router_pb2.GenerateResponse, None]:
        async with aclosing(
            self._api.generate(request, timeout_s=context.time_remaining())
        ) as events:
            async for event in events:
                yield event


async def _whole(
    events: AsyncIterator[router_pb2.GenerateResponse],
) -> router_pb2.CompleteResponse:
    """A generation's events gathered into one reply."""
    reply = router_pb2.CompleteResponse()
    chunks: list[str] = []
    async for event in events:
        kind = event.WhichOneof("event")
        if kind == "started":
            reply.started.CopyFrom(event.started)
        elif kind == "delta":
            chunks.append(event.delta.text)
            reply.token_ids.extend(event.delta.token_ids)
            _gather_calls(reply.tool_calls, event.delta.tool_calls)
        elif kind == "finished":
            reply.finished.CopyFrom(event.finished)
    reply.text = "".join(chunks)
    return reply


def _gather_calls(
    calls: RepeatedCompositeFieldContainer[common_pb2.ToolCall],
    deltas: Iterable[common_pb2.ToolCallDelta],
) -> None:
    """Tool-call deltas into whole calls: a new index starts a call, the same appends."""
    for d in deltas:
        if d.index >= MAX_TOOL_CALLS:  # the contract's bound: never grow on a worker's word
            continue
        while len(calls) <= d.index:
            calls.add()
        call = calls[d.index]
        call.id = call.id or d.id
        call.name = call.name or d.name
        call.arguments += d.arguments


async def _abort_with_usage(context: Context, err: StreamBroken) -> None:
    """UNAVAILABLE with its details, plus the partial usage the contract promises."""
    status = rpc_status.to_status(err.to_status())
    await context.abort(
        status.code,
        status.details,
        (*status.trailing_metadata, (USAGE_METADATA_KEY, err.usage.SerializeToString())),
    )


def add_to_server(servicer: RouterServicer, server: grpc.aio.Server) -> None:
    router_pb2_grpc.add_RouterServiceServicer_to_server(servicer, server)
