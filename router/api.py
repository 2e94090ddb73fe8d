"""The router's operations as both fronts call them: the gRPC servicer and the OpenAI
HTTP front share this one code path (validation, resolution, scheduling, retries, stats,
deadlines and cancellation), in process."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from modelyard.errors import Unimplemented
from modelyard.v1 import router_pb2
from router.catalog import Catalog
from router.relay import Relay
from router.relay.embedding import EmbedRelay
from router.workers import WorkerPool


class RouterApi:
    def __init__(
        self,
        relay: Relay,
        catalog: Catalog,
        pool: WorkerPool,
        embed_relay: EmbedRelay | None = None,
    ) -> None:
        self._relay = relay
        self._embed_relay = embed_relay
        self._catalog = catalog
        self._pool = pool

    def generate(
        self, request: router_pb2.GenerateRequest, *, timeout_s: float | None
    ) -> AsyncGenerator[router_pb2.GenerateResponse, None]:
        """The generation's events; cancel by closing the generator (`aclose`)."""
        return self._relay.generate(request, timeout_s=timeout_s)

    async def embed(
        self, request: router_pb2.EmbedRequest, *, timeout_s: float | None
    ) -> router_pb2.EmbedResponse:
        """One embedding batch, routed like a generation (router/relay/embedding.py)."""
        if self._embed_relay is None:
            raise Unimplemented("this router serves no embeddings")
        return await self._embed_relay.embed(request, timeout_s=timeout_s)

    async def list_models(
        self, *, timeout_s: float | None
    ) -> router_pb2.RouterServiceListModelsResponse:
        listing = await self._catalog.list_servable(timeout_s=timeout_s)
        return router_pb2.RouterServiceListModelsResponse(
            models=[
                router_pb2.ServableModel(model=m, warm_workers=self._pool.warm_workers(m))
                for m in listing.models
            ],
            routes=self._catalog.routes(),
            catalog_revision=listing.revision,
        )
