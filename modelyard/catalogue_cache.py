"""The registry's catalogue, kept current by `RegistryService.Watch`.

Shared by the router (names to route) and the workers (what they may load).

A snapshot replaces everything; changes apply in revision order. After a broken
stream the follower resumes from the last applied revision (the registry sends a
fresh snapshot when it cannot resume). While the registry is down the cache keeps
answering from what it last saw: routing continues.
"""

from __future__ import annotations

import asyncio
import logging
import random

import grpc

from modelyard.v1 import model_pb2, registry_pb2, registry_pb2_grpc

log = logging.getLogger(__name__)

BACKOFF_S = (0.25, 5.0)


class RegistryCache:
    def __init__(self) -> None:
        self.revision = 0
        self.synced = asyncio.Event()  # set after the first snapshot
        self._models: dict[tuple[str, str], model_pb2.Model] = {}
        self._routes: dict[str, model_pb2.Route] = {}

    # --- reading ---------------------------------------------------------------------

    def models(self) -> list[model_pb2.Model]:
        """Every model version that may be routed to (not archived)."""
        return [m for m in self._models.values() if m.stage != model_pb2.STAGE_ARCHIVED]

    def model(self, name: str, version: str = "") -> model_pb2.Model | None:
        """An exact version (archived included, so the caller can say so), or a name's
        newest production version, else its newest non-archived one."""
        if version:
            return self._models.get((name, version))
        live = [m for m in self.models() if m.name == name]
        production = [m for m in live if m.stage == model_pb2.STAGE_PRODUCTION]
        pool = production or live
        if not pool:
            return None
        return max(pool, key=lambda m: (m.created_at.seconds, m.created_at.nanos, m.version))

    def route(self, name: str) -> model_pb2.Route | None:
        return self._routes.get(name)

    def routes(self) -> list[model_pb2.Route]:
        return list(self._routes.values())

    # --- writing ---------------------------------------------------------------------

    def apply(self, event: registry_pb2.WatchResponse) -> None:
        kind = event.WhichOneof("event")
        if kind == "snapshot":
            snap = event.snapshot
            self._models = {(m.name, m.version): m for m in snap.models}
            self._routes = {r.name: r for r in snap.routes}
            self.revision = snap.revision
            self.synced.set()
        elif kind == "change":
            self._apply_change(event.change)

    def _apply_change(self, change: registry_pb2.CatalogChange) -> None:
        if change.revision <= self.revision:
            return  # already applied (a resumed stream may repeat the boundary)
        if change.kind == registry_pb2.CHANGE_KIND_MODEL_PUT:
            self._models[(change.model.name, change.model.version)] = change.model
        elif change.kind == registry_pb2.CHANGE_KIND_MODEL_DELETED:
            self._models.pop((change.model.name, change.model.version), None)
        elif change.kind == registry_pb2.CHANGE_KIND_ROUTE_PUT:
            self._routes[change.route.name] = change.route
        elif change.kind == registry_pb2.CHANGE_KIND_ROUTE_DELETED:
            self._routes.pop(change.route.name, None)
        self.revision = change.revision


async def follow(
    cache: RegistryCache,
    stub: registry_pb2_grpc.RegistryServiceAsyncStub,
    address: str,
) -> None:
    """Keep `cache` current until cancelled, reconnecting with jittered backoff."""
    delay = BACKOFF_S[0]
    while True:
        try:
            connected = await _watch_once(cache, stub, address)
            why = "stream ended"
        except _WatchLost as lost:
            connected, why = lost.connected, lost.why
            if lost.code == grpc.StatusCode.UNIMPLEMENTED:
                # A registry without Watch: the reader falls back to GetModel.
                log.warning("registry %s has no Watch; resolving per request", address)
                return
        if connected:
            log.warning(
                "lost registry watch (%s); serving revision %d from cache", why, cache.revision
            )
            delay = BACKOFF_S[0]
        else:
            log.debug("registry %s not watchable yet: %s", address, why)
        await asyncio.sleep(delay * random.uniform(0.8, 1.2))
        delay = min(delay * 2, BACKOFF_S[1])


class _WatchLost(Exception):
    def __init__(self, code: grpc.StatusCode, why: str, *, connected: bool) -> None:
        super().__init__(why)
        self.code = code
        self.why = why
        self.connected = connected


async def _watch_once(
    cache: RegistryCache, stub: registry_pb2_grpc.RegistryServiceAsyncStub, address: str
) -> bool:
    """Apply one Watch stream's events until it ends; whether it delivered any."""
    connected = False
    # Waits for the channel rather than failing fast in its reconnect backoff: the stream
    # opens as soon as the registry answers again (see modelyard/channel_options.py).
    call = stub.Watch(registry_pb2.WatchRequest(since_revision=cache.revision), wait_for_ready=True)
    try:
        async for event in call:
            if not connected:
                log.info("watching registry %s from revision %d", address, cache.revision)
                connected = True
            cache.apply(event)
    except grpc.aio.AioRpcError as err:
        raise _WatchLost(
            err.code(), f"{err.code().name}: {err.details()}", connected=connected
        ) from err
    finally:
        call.cancel()
    return connected
