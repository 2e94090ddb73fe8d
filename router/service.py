"""RouterService over gRPC: validates, translates messages and delegates, nothing more."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, TypeAlias

import grpc
from grpc_status import rpc_status

from modelyard.errors import grpc_errors, unimplemented
from modelyard.v1 import router_pb2, router_pb2_grpc
from modelyard.validation import check_generation
from router.catalog import Catalog
from router.relay import Relay, StreamBroken
from router.workers import WorkerPool

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
ISSUE_5 = "issue #5: routing stats and A/B feedback"
# Trailing metadata that carries the partial Usage when a stream breaks mid-way.
USAGE_METADATA_KEY = "modelyard-usage-bin"

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(self, relay: Relay, catalog: Catalog, pool: WorkerPool) -> None:
        self._relay = relay
        self._catalog = catalog
        self._pool = pool

    @grpc_errors
    async def Generate(
        self, request: router_pb2.GenerateRequest, context: Context
    ) -> AsyncIterator[router_pb2.GenerateResponse]:
        async with aclosing(self._events(request, context)) as events:
            async for event in events:
                yield event

    @grpc_errors
    async def Complete(
        self, request: router_pb2.CompleteRequest, context: Context
    ) -> router_pb2.CompleteResponse:
        # Same field numbers and meaning (see router.proto), so the bytes convert.
        generate = router_pb2.GenerateRequest.FromString(request.SerializeToString())
        reply = router_pb2.CompleteResponse()
        chunks: list[str] = []
        async with aclosing(self._events(generate, context)) as events:
            async for event in events:
                kind = event.WhichOneof("event")
                if kind == "started":
                    reply.started.CopyFrom(event.started)
                elif kind == "delta":
                    chunks.append(event.delta.text)
                    reply.token_ids.extend(event.delta.token_ids)
                elif kind == "finished":
                    reply.finished.CopyFrom(event.finished)
        reply.text = "".join(chunks)
        return reply

    @grpc_errors
    async def ListModels(
        self, request: router_pb2.RouterServiceListModelsRequest, context: Context
    ) -> router_pb2.RouterServiceListModelsResponse:
        listing = await self._catalog.list_servable(timeout_s=context.time_remaining())
        # Routes arrive with issue 5 (the registry's routes are issue 3).
        return router_pb2.RouterServiceListModelsResponse(
            models=[
                router_pb2.ServableModel(model=m, warm_workers=self._pool.warm_workers(m))
                for m in listing.models
            ],
            catalog_revision=listing.revision,
        )

    @grpc_errors
    async def ListWorkers(
        self, request: router_pb2.ListWorkersRequest, context: Context
    ) -> router_pb2.ListWorkersResponse:
        return router_pb2.ListWorkersResponse(workers=self._pool.infos())

    @grpc_errors
    async def GetRoutingStats(
        self, request: router_pb2.GetRoutingStatsRequest, context: Context
    ) -> router_pb2.GetRoutingStatsResponse:
        raise unimplemented("RouterService.GetRoutingStats", ISSUE_5)

    @grpc_errors
    async def RecordFeedback(
        self, request: router_pb2.RecordFeedbackRequest, context: Context
    ) -> router_pb2.RecordFeedbackResponse:
        raise unimplemented("RouterService.RecordFeedback", ISSUE_5)

    async def _events(
        self, request: router_pb2.GenerateRequest, context: Context
    ) -> AsyncGenerator[router_pb2.GenerateResponse, None]:
        # Bad input is INVALID_ARGUMENT before any registry or worker call.
        check_generation(request.prompt, request.messages, request.sampling)
        try:
            async with aclosing(
                self._relay.generate(request, timeout_s=context.time_remaining())
            ) as events:
                async for event in events:
                    yield event
        except StreamBroken as err:
            await _abort_with_usage(context, err)


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
