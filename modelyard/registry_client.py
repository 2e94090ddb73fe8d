"""Python client SDK for the modelyard registry: the catalogue of models and routes.

    from modelyard.registry_client import RegistryClient
    from modelyard.v1 import model_pb2

    with RegistryClient() as registry:  # MODELYARD_REGISTRY, else 127.0.0.1:50051
        for model in registry.list_models(stage=model_pb2.STAGE_PRODUCTION):
            print(model.name, model.version)

The settings are the CLI's (`modelyard models`, `modelyard routes`): the address from
MODELYARD_REGISTRY, the admin token (writes) from MODELYARD_ADMIN_TOKEN or
MODELYARD_REGISTRY_ADMIN_TOKEN, a reader token (reads) from MODELYARD_REGISTRY_TOKEN, TLS
from MODELYARD_TLS_* (client_connection.py). Reads send the reader token, else the
admin's; writes send the admin's. A call the registry refuses raises the domain errors of
`modelyard.errors` (Unauthenticated, PermissionDenied, NotFound, AlreadyExists, ...), as
`modelyard.client.Client` does. Each method is one RPC (list_models follows its pages).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self, TypeAlias

import grpc

from modelyard.bearer import bearer_metadata
from modelyard.client_connection import REGISTRY, Connection
from modelyard.errors import from_rpc_error
from modelyard.registry_watch import AsyncWatchStream, WatchStream
from modelyard.v1 import model_pb2, registry_pb2, registry_pb2_grpc

__all__ = ["AsyncRegistryClient", "AsyncWatchStream", "RegistryClient", "WatchStream"]
DEFAULT_TIMEOUT_S = 30.0
READER_TOKEN_VARIABLE = "MODELYARD_REGISTRY_TOKEN"
PAGE_SIZE = 500

Stage: TypeAlias = model_pb2.Stage.ValueType
RolloutControl: TypeAlias = registry_pb2.RolloutControl.ValueType


def _split_ref(name: str, version: str) -> tuple[str, str]:
    """("smol@1", "") -> ("smol", "1"); an explicit version wins."""
    bare, _, ref_version = name.partition("@")
    return bare, version or ref_version


def list_request(
    *,
    name: str = "",
    stage: Stage = model_pb2.STAGE_UNSPECIFIED,
    require_chat: bool = False,
    require_completion: bool = False,
    tags: Sequence[str] = (),
    label_selector: str = "",
    page_token: str = "",
) -> registry_pb2.ListModelsRequest:
    """One page's ListModelsRequest; empty filters match everything."""
    return registry_pb2.ListModelsRequest(
        name=name,
        stage=stage,
        require_chat=require_chat,
        require_completion=require_completion,
        tags=list(tags),
        label_selector=label_selector,
        page_size=PAGE_SIZE,
        page_token=page_token,
    )


class _Base:
    """What both clients share: the connection, the two tokens, the default deadline."""

    def __init__(
        self,
        address: str | None,
        admin_token: str | None,
        registry_token: str | None,
        timeout_s: float,
        metadata: Sequence[tuple[str, str]],
        connection: dict[str, Any],
    ) -> None:
        self.connection = Connection.resolve(
            address, api_key=admin_token, service=REGISTRY, **connection
        )
        reader = (
            os.environ.get(READER_TOKEN_VARIABLE, "") if registry_token is None else registry_token
        )
        self._timeout_s = timeout_s
        self._write_metadata = (*metadata, *bearer_metadata(self.connection.api_key))
        self._read_metadata = (*metadata, *bearer_metadata(reader or self.connection.api_key))

    def _args(self, write: bool, timeout_s: float | None) -> dict[str, Any]:
        metadata = self._write_metadata if write else self._read_metadata
        return {"timeout": timeout_s or self._timeout_s, "metadata": metadata}

    def _watch_args(self, timeout_s: float | None) -> dict[str, Any]:
        return {"timeout": timeout_s, "metadata": self._read_metadata}  # no deadline by default


class RegistryClient(_Base):
    """Blocking client for RegistryService. Unset arguments come from the environment
    (the CLI's variables: see the module's docstring)."""

    def __init__(
        self,
        address: str | None = None,
        *,
        admin_token: str | None = None,
        registry_token: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        metadata: Sequence[tuple[str, str]] = (),
        **connection: Any,
    ) -> None:
        super().__init__(address, admin_token, registry_token, timeout_s, metadata, connection)
        self._channel = self.connection.channel()
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)

    def _unary(self, method: Any, request: Any, *, write: bool = False) -> Any:
        try:
            return method(request, **self._args(write, None))
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    def register_model(self, model: model_pb2.Model) -> registry_pb2.RegisterModelResponse:
        """Add a version (admin). The same content again: created=False; other content
        under the same name@version: AlreadyExists."""
        reply: registry_pb2.RegisterModelResponse = self._unary(
            self._stub.RegisterModel, registry_pb2.RegisterModelRequest(model=model), write=True
        )
        return reply

    def get_model(self, name: str, version: str = "") -> model_pb2.Model:
        """One version: `name@version`, or a bare name for its newest production version."""
        name, version = _split_ref(name, version)
        reply: registry_pb2.GetModelResponse = self._unary(
            self._stub.GetModel, registry_pb2.GetModelRequest(name=name, version=version)
        )
        return reply.model

    def list_models(self, **filters: Any) -> list[model_pb2.Model]:
        """Every version matching the filters of `list_request`, newest first per name."""
        models: list[model_pb2.Model] = []
        token = ""
        while True:
            page: registry_pb2.ListModelsResponse = self._unary(
                self._stub.ListModels, list_request(page_token=token, **filters)
            )
            models += page.models
            if not (token := page.next_page_token):
                return models

    def set_stage(self, name: str, version: str, stage: Stage) -> model_pb2.Model:
        """Move a version to staging, production or archived (admin)."""
        reply: registry_pb2.SetStageResponse = self._unary(
            self._stub.SetStage,
            registry_pb2.SetStageRequest(name=name, version=version, stage=stage),
            write=True,
        )
        return reply.model

    def delete_model(self, name: str, version: str) -> int:
        """Remove a version (admin); FailedPrecondition while a route uses it. Returns the
        catalogue revision after the write."""
        reply: registry_pb2.DeleteModelResponse = self._unary(
            self._stub.DeleteModel,
            registry_pb2.DeleteModelRequest(name=name, version=version),
            write=True,
        )
        return reply.revision

    def put_route(self, route: model_pb2.Route) -> registry_pb2.PutRouteResponse:
        """Create or replace a route (admin)."""
        reply: registry_pb2.PutRouteResponse = self._unary(
            self._stub.PutRoute, registry_pb2.PutRouteRequest(route=route), write=True
        )
        return reply

    def get_route(self, name: str) -> model_pb2.Route:
        reply: registry_pb2.GetRouteResponse = self._unary(
            self._stub.GetRoute, registry_pb2.GetRouteRequest(name=name)
        )
        return reply.route

    def list_routes(self) -> list[model_pb2.Route]:
        """Every route, sorted by name."""
        reply: registry_pb2.ListRoutesResponse = self._unary(
            self._stub.ListRoutes, registry_pb2.ListRoutesRequest()
        )
        return list(reply.routes)

    def delete_route(self, name: str) -> int:
        """Remove a route (admin); returns the catalogue revision after the write."""
        reply: registry_pb2.DeleteRouteResponse = self._unary(
            self._stub.DeleteRoute, registry_pb2.DeleteRouteRequest(name=name), write=True
        )
        return reply.revision

    def control_rollout(
        self, route: str, action: RolloutControl, reason: str = ""
    ) -> registry_pb2.ControlRolloutResponse:
        """Pause, resume, abort or restart a route's rollout (admin)."""
        reply: registry_pb2.ControlRolloutResponse = self._unary(
            self._stub.ControlRollout,
            registry_pb2.ControlRolloutRequest(route=route, action=action, reason=reason),
            write=True,
        )
        return reply

    def watch(self, since_revision: int = 0, *, timeout_s: float | None = None) -> WatchStream:
        """The catalogue, then every change after it; from `since_revision` (the last one
        applied) only the changes after it. Open until cancelled or `timeout_s` passes."""
        return WatchStream(
            self._stub.Watch(
                registry_pb2.WatchRequest(since_revision=since_revision),
                **self._watch_args(timeout_s),
            )
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncRegistryClient(_Base):
    """asyncio client for RegistryService; the same methods as RegistryClient, awaited
    (`watch` returns an AsyncWatchStream at once)."""

    def __init__(
        self,
        address: str | None = None,
        *,
        admin_token: str | None = None,
        registry_token: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        metadata: Sequence[tuple[str, str]] = (),
        **connection: Any,
    ) -> None:
        super().__init__(address, admin_token, registry_token, timeout_s, metadata, connection)
        self._channel = self.connection.aio_channel()
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)

    async def _unary(self, method: Any, request: Any, *, write: bool = False) -> Any:
        try:
            return await method(request, **self._args(write, None))
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err

    async def register_model(self, model: model_pb2.Model) -> registry_pb2.RegisterModelResponse:
        reply: registry_pb2.RegisterModelResponse = await self._unary(
            self._stub.RegisterModel, registry_pb2.RegisterModelRequest(model=model), write=True
        )
        return reply

    async def get_model(self, name: str, version: str = "") -> model_pb2.Model:
        name, version = _split_ref(name, version)
        reply: registry_pb2.GetModelResponse = await self._unary(
            self._stub.GetModel, registry_pb2.GetModelRequest(name=name, version=version)
        )
        return reply.model

    async def list_models(self, **filters: Any) -> list[model_pb2.Model]:
        models: list[model_pb2.Model] = []
        token = ""
        while True:
            page: registry_pb2.ListModelsResponse = await self._unary(
                self._stub.ListModels, list_request(page_token=token, **filters)
            )
            models += page.models
            if not (token := page.next_page_token):
                return models

    async def set_stage(self, name: str, version: str, stage: Stage) -> model_pb2.Model:
        reply: registry_pb2.SetStageResponse = await self._unary(
            self._stub.SetStage,
            registry_pb2.SetStageRequest(name=name, version=version, stage=stage),
            write=True,
        )
        return reply.model

    async def delete_model(self, name: str, version: str) -> int:
        reply: registry_pb2.DeleteModelResponse = await self._unary(
            self._stub.DeleteModel,
            registry_pb2.DeleteModelRequest(name=name, version=version),
            write=True,
        )
        return reply.revision

    async def put_route(self, route: model_pb2.Route) -> registry_pb2.PutRouteResponse:
        reply: registry_pb2.PutRouteResponse = await self._unary(
            self._stub.PutRoute, registry_pb2.PutRouteRequest(route=route), write=True
        )
        return reply

    async def get_route(self, name: str) -> model_pb2.Route:
        reply: registry_pb2.GetRouteResponse = await self._unary(
            self._stub.GetRoute, registry_pb2.GetRouteRequest(name=name)
        )
        return reply.route

    async def list_routes(self) -> list[model_pb2.Route]:
        reply: registry_pb2.ListRoutesResponse = await self._unary(
            self._stub.ListRoutes, registry_pb2.ListRoutesRequest()
        )
        return list(reply.routes)

    async def delete_route(self, name: str) -> int:
        reply: registry_pb2.DeleteRouteResponse = await self._unary(
            self._stub.DeleteRoute, registry_pb2.DeleteRouteRequest(name=name), write=True
        )
        return reply.revision

    async def control_rollout(
        self, route: str, action: RolloutControl, reason: str = ""
    ) -> registry_pb2.ControlRolloutResponse:
        reply: registry_pb2.ControlRolloutResponse = await self._unary(
            self._stub.ControlRollout,
            registry_pb2.ControlRolloutRequest(route=route, action=action, reason=reason),
            write=True,
        )
        return reply

    def watch(self, since_revision: int = 0, *, timeout_s: float | None = None) -> AsyncWatchStream:
        return AsyncWatchStream(
            self._stub.Watch(
                registry_pb2.WatchRequest(since_revision=since_revision),
                **self._watch_args(timeout_s),
            )
        )

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
