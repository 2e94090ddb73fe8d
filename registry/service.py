"""RegistryService over gRPC: translates messages and calls the store.

Who may write is checked before any handler runs, by `registry.auth.registry_gate`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from datetime import datetime
from typing import Any, TypeAlias

import grpc
from sqlalchemy.ext.asyncio import AsyncSession

from modelyard.auth import current_caller
from modelyard.errors import InvalidArgument, grpc_errors
from modelyard.v1 import model_pb2, registry_pb2, registry_pb2_grpc
from registry.rollout.control import check_request, control
from registry.rollout.edit import RouteEdited
from registry.store import ModelFilter, RegistryStore

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, store: RegistryStore) -> None:
        self._store = store

    @grpc_errors
    async def ControlRollout(
        self, request: registry_pb2.ControlRolloutRequest, context: Context
    ) -> registry_pb2.ControlRolloutResponse:
        check_request(request.action, request.reason)
        caller = current_caller()
        actor = (caller.identity or caller.key_name) if caller is not None else ""

        async def edit(session: AsyncSession, route: model_pb2.Route, now: datetime) -> RouteEdited:
            changed = control(
                route, request.action, now, actor=actor or "admin", reason=request.reason
            )
            return RouteEdited(changed)

        done = await self._store.edit_route(request.route, edit)
        assert done is not None  # the edit never declines: it changes or raises
        return registry_pb2.ControlRolloutResponse(route=done[0], revision=done[1])

    @grpc_errors
    async def RegisterModel(
        self, request: registry_pb2.RegisterModelRequest, context: Context
    ) -> registry_pb2.RegisterModelResponse:
        if not request.HasField("model"):
            raise InvalidArgument.for_field("model", "required: the model version to register")
        result = await self._store.register(request.model)
        return registry_pb2.RegisterModelResponse(
            model=result.model, created=result.created, revision=result.revision
        )

    @grpc_errors
    async def GetModel(
        self, request: registry_pb2.GetModelRequest, context: Context
    ) -> registry_pb2.GetModelResponse:
        model = await self._store.get(request.name, request.version)
        return registry_pb2.GetModelResponse(model=model)

    @grpc_errors
    async def ListModels(
        self, request: registry_pb2.ListModelsRequest, context: Context
    ) -> registry_pb2.ListModelsResponse:
        filters = ModelFilter(
            name=request.name,
            stage=request.stage,
            require_chat=request.require_chat,
            require_completion=request.require_completion,
            tags=tuple(request.tags),
            label_selector=request.label_selector,
        )
        page = await self._store.list_models(
            filters, page_size=request.page_size, page_token=request.page_token
        )
        return registry_pb2.ListModelsResponse(
            models=page.models, next_page_token=page.next_page_token, revision=page.revision
        )

    @grpc_errors
    async def SetStage(
        self, request: registry_pb2.SetStageRequest, context: Context
    ) -> registry_pb2.SetStageResponse:
        model, revision = await self._store.set_stage(request.name, request.version, request.stage)
        return registry_pb2.SetStageResponse(model=model, revision=revision)

    @grpc_errors
    async def DeleteModel(
        self, request: registry_pb2.DeleteModelRequest, context: Context
    ) -> registry_pb2.DeleteModelResponse:
        revision = await self._store.delete_model(request.name, request.version)
        return registry_pb2.DeleteModelResponse(revision=revision)

    @grpc_errors
    async def PutRoute(
        self, request: registry_pb2.PutRouteRequest, context: Context
    ) -> registry_pb2.PutRouteResponse:
        if not request.HasField("route"):
            raise InvalidArgument.for_field("route", "required: the route to create or replace")
        route, revision = await self._store.put_route(request.route)
        return registry_pb2.PutRouteResponse(route=route, revision=revision)

    @grpc_errors
    async def GetRoute(
        self, request: registry_pb2.GetRouteRequest, context: Context
    ) -> registry_pb2.GetRouteResponse:
        return registry_pb2.GetRouteResponse(route=await self._store.get_route(request.name))

    @grpc_errors
    async def ListRoutes(
        self, request: registry_pb2.ListRoutesRequest, context: Context
    ) -> registry_pb2.ListRoutesResponse:
        listed = await self._store.list_routes()
        return registry_pb2.ListRoutesResponse(routes=listed.routes, revision=listed.revision)

    @grpc_errors
    async def DeleteRoute(
        self, request: registry_pb2.DeleteRouteRequest, context: Context
    ) -> registry_pb2.DeleteRouteResponse:
        return registry_pb2.DeleteRouteResponse(
            revision=await self._store.delete_route(request.name)
        )

    @grpc_errors
    async def Watch(  # type: ignore[override]  # bytes: see add_to_server
        self, request: registry_pb2.WatchRequest, context: Context
    ) -> AsyncIterator[registry_pb2.WatchResponse | bytes]:
        # Closed here, not whenever the collector finds it: a cancelled Watch stops counting
        # as a watcher (and lets the revision poller go) before the handler returns.
        async with aclosing(self._store.watch(request.since_revision)) as events:
            async for event in events:
                yield self._store.wire(event)  # a shared snapshot goes as shared bytes


def add_to_server(store: RegistryStore, server: grpc.aio.Server) -> None:
    """The generated registration, with Watch's serializer passing bytes through: a
    snapshot (~1.8 MB at 10,000 models) is serialized once for every watcher, not once
    per stream."""
    captured = _Registrations()
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(store), captured)
    service, methods = captured.service, dict(captured.methods)
    watch = methods["Watch"]
    methods["Watch"] = grpc.unary_stream_rpc_method_handler(
        watch.unary_stream,
        watch.request_deserializer,
        _bytes_as_they_are(watch.response_serializer),
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, methods),))
    server.add_registered_method_handlers(service, methods)


class _Registrations:
    """Takes the generated code's registration in place of a server."""

    def __init__(self) -> None:
        self.service = ""
        self.methods: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass  # the same methods come again, by name, below

    def add_registered_method_handlers(
        self, service: str, methods: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.service, self.methods = service, methods


def _bytes_as_they_are(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    def serializer(reply: Any) -> bytes:
        return reply if isinstance(reply, bytes) else serialize(reply)

    return serializer
