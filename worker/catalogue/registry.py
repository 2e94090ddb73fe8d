"""The registry as this worker's catalogue: its Watch-fed cache first, GetModel for a
version the cache has not seen yet (registered a moment ago, or before the first
snapshot). Versions this worker resolved once keep resolving while the registry is
unreachable, so warm models keep serving through an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import grpc

from modelyard.catalogue_cache import RegistryCache, follow
from modelyard.errors import ModelyardError, NotFound, Unavailable
from modelyard.refs import ModelKey, split_key
from modelyard.v1 import model_pb2, registry_pb2, registry_pb2_grpc
from worker.catalogue.checks import servable

log = logging.getLogger(__name__)

# Answers that mean "cannot reach it", as opposed to "it said no".
_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


class RegistryCatalogue:
    def __init__(
        self,
        stub: registry_pb2_grpc.RegistryServiceAsyncStub,
        *,
        address: str,
        timeout_s: float = 3.0,
        ttl_s: float = 5.0,
        channel: grpc.aio.Channel | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache = RegistryCache()
        self.address = address
        self._stub = stub
        self._timeout_s = timeout_s
        self._ttl_s = ttl_s
        self._channel = channel
        self._clock = clock
        # GetModel answers with when they came: versions the Watch cache lacks.
        self._fetched: dict[ModelKey, tuple[float, model_pb2.Model]] = {}
        self._follow: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Follow the registry's Watch in the background until `close`."""
        self._follow = asyncio.create_task(
            follow(self.cache, self._stub, self.address), name="registry-watch"
        )

    async def close(self) -> None:
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow
        if self._channel is not None:
            await self._channel.close()

    async def resolve(self, key: ModelKey) -> model_pb2.Model:
        name, version = split_key(key)
        model = self.cache.model(name, version)
        if model is None:
            model = await self._fetch(key, name, version)
        return servable(model)

    async def _fetch(self, key: ModelKey, name: str, version: str) -> model_pb2.Model:
        known = self._fetched.get(key)
        if known is not None and self._clock() - known[0] <= self._ttl_s:
            return known[1]
        try:
            # A version never resolved waits (within the timeout) for a registry that is
            # still starting, or whose connection is backing off after it restarted; one
            # resolved before falls back to its last answer at once.
            reply: registry_pb2.GetModelResponse = await self._stub.GetModel(
                registry_pb2.GetModelRequest(name=name, version=version),
                timeout=self._timeout_s,
                wait_for_ready=known is None,
            )
        except grpc.aio.AioRpcError as err:
            if err.code() in _UNREACHABLE and known is not None:
                log.warning(
                    "registry %s unreachable (%s); serving %s as last resolved",
                    self.address,
                    err.code().name,
                    key,
                )
                return known[1]
            self._fetched.pop(key, None)
            raise self._refusal(key, err) from err
        self._fetched[key] = (self._clock(), reply.model)
        return reply.model

    def _refusal(self, key: ModelKey, err: grpc.aio.AioRpcError) -> ModelyardError:
        code = err.code()
        if code == grpc.StatusCode.NOT_FOUND:
            return NotFound(
                f"model {key} is not registered; register it (`modelyard models register`) "
                "before asking a worker to load it",
                reason="MODEL_NOT_FOUND",
                metadata={"model": key},
            )
        # The registry's own words stay in this worker's log: the caller gets what to do.
        log.warning(
            "registry %s refused GetModel(%s): %s %s", self.address, key, code.name, err.details()
        )
        if code in _UNREACHABLE:
            why = "is unreachable"
        elif code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            why = "refused this worker's credentials (MODELYARD_WORKER_REGISTRY_TOKEN)"
        else:
            why = f"answered {code.name}"
        return Unavailable(
            f"cannot resolve {key}: the registry at {self.address} {why} and this worker "
            "does not know the model yet; retry once the registry answers",
            reason="REGISTRY_UNAVAILABLE",
            metadata={"model": key, "registry": self.address},
        )
