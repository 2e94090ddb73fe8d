"""RegistryService over gRPC: translates messages and calls the store, nothing more."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from modelyard.errors import InvalidArgument, grpc_errors, unimplemented
from modelyard.v1 import registry_pb2, registry_pb2_grpc
from registry.store import ModelFilter, ModelStore

SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
ISSUE_3 = "issue #3: versions, stages, routes and Watch"

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, store: ModelStore) -> None:
        self._store = store

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
        raise unimplemented("RegistryService.SetStage", ISSUE_3)

    @grpc_errors
    async def DeleteModel(
        self, request: registry_pb2.DeleteModelRequest, context: Context
    ) -> registry_pb2.DeleteModelResponse:
        raise unimplemented("RegistryService.DeleteModel", ISSUE_3)

    @grpc_errors
    async def PutRoute(
        self, request: registry_pb2.PutRouteRequest, context: Context
    ) -> registry_pb2.PutRouteResponse:
        raise unimplemented("RegistryService.PutRoute", ISSUE_3)

    @grpc_errors
    async def GetRoute(
        self, request: registry_pb2.GetRouteRequest, context: Context
    ) -> registry_pb2.GetRouteResponse:
        raise unimplemented("RegistryService.GetRoute", ISSUE_3)

    @grpc_errors
    async def ListRoutes(
        self, request: registry_pb2.ListRoutesRequest, context: Context
    ) -> registry_pb2.ListRoutesResponse:
        raise unimplemented("RegistryService.ListRoutes", ISSUE_3)

    @grpc_errors
    async def DeleteRoute(
        self, request: registry_pb2.DeleteRouteRequest, context: Context
    ) -> registry_pb2.DeleteRouteResponse:
        raise unimplemented("RegistryService.DeleteRoute", ISSUE_3)

    @grpc_errors
    async def Watch(
        self, request: registry_pb2.WatchRequest, context: Context
    ) -> AsyncIterator[registry_pb2.WatchResponse]:
        raise unimplemented("RegistryService.Watch", ISSUE_3)
        yield  # an async generator, as a server-streaming method must be


def add_to_server(store: ModelStore, server: grpc.aio.Server) -> None:
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(store), server)
