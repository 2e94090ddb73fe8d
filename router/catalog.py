"""Resolve a request's `model` field to a registry entry, through a small TTL cache.

The registry is the source of truth; the cache keeps hot names off it and lets
the router keep serving (from entries of any age) while the registry is down.
Issue 5 replaces the polling with `RegistryService.Watch`, adds routes and
objective-based "auto" routing; callers only see `Catalog.resolve` and
`Catalog.list_servable`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc

from modelyard.errors import (
    FailedPrecondition,
    ModelyardError,
    NotFound,
    Unavailable,
    from_rpc_error,
)
from modelyard.refs import AUTO, ModelRef, parse_ref
from modelyard.v1 import common_pb2, model_pb2, registry_pb2, registry_pb2_grpc

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# Registry answers that mean "cannot reach it", as opposed to "it said no".
_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_PAGE_SIZE = 1000


class TtlCache(Generic[K, V]):
    """Values with the time they were fetched; stale ones stay for registry outages."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[K, tuple[float, V]] = {}

    def fresh(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None or self._clock() - entry[0] > self._ttl_s:
            return None
        return entry[1]

    def any_age(self, key: K) -> V | None:
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def put(self, key: K, value: V) -> None:
        self._entries[key] = (self._clock(), value)

    def drop(self, key: K) -> None:
        self._entries.pop(key, None)


@dataclass(frozen=True)
class AutoQuery:
    """What an "auto" request needs of a model (objectives come with issue 5)."""

    chat: bool
    tags: tuple[str, ...] = ()
    min_context_length: int = 0

    @classmethod
    def of(cls, chat: bool, hints: common_pb2.RoutingHints) -> AutoQuery:
        return cls(chat, tuple(sorted(hints.required_tags)), hints.min_context_length)

    def describe(self) -> str:
        parts = ["chat" if self.chat else "plain completion"]
        if self.tags:
            parts.append("tags " + ", ".join(self.tags))
        if self.min_context_length:
            parts.append(f"a context of at least {self.min_context_length} tokens")
        return " and ".join(parts)


@dataclass(frozen=True)
class Listing:
    """Every servable (non-archived) model version and the revision it was read at."""

    models: tuple[model_pb2.Model, ...]
    revision: int


def label(model: model_pb2.Model) -> str:
    return f"{model.name}@{model.version}"


class Catalog:
    """Model resolution against the registry with a TTL cache and outage fallback."""

    def __init__(
        self,
        stub: registry_pb2_grpc.RegistryServiceAsyncStub,
        *,
        registry_address: str,
        ttl_s: float = 5.0,
        call_timeout_s: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stub = stub
        self._address = registry_address
        self._timeout_s = call_timeout_s
        self._models: TtlCache[ModelRef, model_pb2.Model] = TtlCache(ttl_s, clock)
        self._auto: TtlCache[AutoQuery, tuple[model_pb2.Model, ...]] = TtlCache(ttl_s, clock)
        self._listing: TtlCache[str, Listing] = TtlCache(ttl_s, clock)

    async def resolve(
        self,
        model_field: str,
        *,
        chat: bool,
        hints: common_pb2.RoutingHints | None = None,
        timeout_s: float | None = None,
    ) -> model_pb2.Model:
        """The model version a request's `model` field names.

        "name" is its newest production version (else the newest non-archived one),
        "name@version" is exact, and "" or "auto" is the first model that fits the
        request (see `_pick_auto`).
        """
        text = model_field.strip()
        if not text or text == AUTO:
            query = AutoQuery.of(chat, hints or common_pb2.RoutingHints())
            return await self._pick_auto(query, timeout_s)
        ref = parse_ref(text, "model")
        model = await self._through(
            self._models, ref, lambda: self._get_model(ref, timeout_s), f"model '{ref}'"
        )
        if model.stage == model_pb2.STAGE_ARCHIVED:
            raise FailedPrecondition(
                f"model {label(model)} is archived and is never routed to; "
                "name a servable version (see `modelyard models list`)",
                reason="MODEL_ARCHIVED",
                metadata={"model": label(model)},
            )
        return model

    async def list_servable(self, *, timeout_s: float | None = None) -> Listing:
        """All non-archived model versions, for RouterService.ListModels."""
        return await self._through(
            self._listing, "all", lambda: self._list_all(timeout_s), "the model list"
        )

    async def _pick_auto(self, query: AutoQuery, timeout_s: float | None) -> model_pb2.Model:
        # The skeleton's "auto": the first fitting model, production first. Choosing by
        # objective (cost, latency, load) is the issue-5 scheduler's job.
        models = await self._through(
            self._auto, query, lambda: self._list_fitting(query, timeout_s), "the model list"
        )
        if not models:
            raise NotFound(
                f"no servable model supports {query.describe()}; name a model, or see "
                "`modelyard models list`",
                reason="NO_MODEL_FITS",
            )
        return models[0]

    async def _through(
        self, cache: TtlCache[K, V], key: K, fetch: Callable[[], Awaitable[V]], what: str
    ) -> V:
        cached = cache.fresh(key)
        if cached is not None:
            return cached
        try:
            value = await fetch()
        except grpc.aio.AioRpcError as err:
            if err.code() in _UNREACHABLE:
                stale = cache.any_age(key)
                if stale is not None:
                    log.warning(
                        "registry at %s unreachable (%s); serving %s from cache",
                        self._address,
                        err.code().name,
                        what,
                    )
                    return stale
                raise Unavailable(
                    f"registry at {self._address} is unreachable and {what} is not cached: "
                    f"{err.details() or err.code().name}",
                    reason="REGISTRY_UNAVAILABLE",
                    metadata={"registry": self._address},
                ) from err
            if err.code() == grpc.StatusCode.NOT_FOUND:
                cache.drop(key)
            raise self._translate(err, what) from err
        cache.put(key, value)
        return value

    def _translate(self, err: grpc.aio.AioRpcError, what: str) -> ModelyardError:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return NotFound(
                f"{what} is not registered; see `modelyard models list`",
                reason="MODEL_NOT_FOUND",
            )
        return from_rpc_error(err)

    def _deadline(self, timeout_s: float | None) -> float:
        return self._timeout_s if timeout_s is None else max(0.0, min(self._timeout_s, timeout_s))

    async def _get_model(self, ref: ModelRef, timeout_s: float | None) -> model_pb2.Model:
        reply: registry_pb2.GetModelResponse = await self._stub.GetModel(
            registry_pb2.GetModelRequest(name=ref.name, version=ref.version),
            timeout=self._deadline(timeout_s),
        )
        return reply.model

    async def _list_fitting(
        self, query: AutoQuery, timeout_s: float | None
    ) -> tuple[model_pb2.Model, ...]:
        request = registry_pb2.ListModelsRequest(
            require_chat=query.chat, require_completion=not query.chat, tags=list(query.tags)
        )
        models, _ = await self._list(request, timeout_s)
        fitting = [
            m
            for m in models
            if not query.min_context_length
            or m.capabilities.context_length >= query.min_context_length
        ]
        # Stable: production before staging, then the registry's order (newest first).
        fitting.sort(key=lambda m: m.stage != model_pb2.STAGE_PRODUCTION)
        return tuple(fitting)

    async def _list_all(self, timeout_s: float | None) -> Listing:
        models, revision = await self._list(registry_pb2.ListModelsRequest(), timeout_s)
        return Listing(tuple(models), revision)

    async def _list(
        self, request: registry_pb2.ListModelsRequest, timeout_s: float | None
    ) -> tuple[list[model_pb2.Model], int]:
        """Every non-archived model matching `request`, across pages."""
        request.page_size = _PAGE_SIZE
        models: list[model_pb2.Model] = []
        revision = 0
        while True:
            reply: registry_pb2.ListModelsResponse = await self._stub.ListModels(
                request, timeout=self._deadline(timeout_s)
            )
            models += [m for m in reply.models if m.stage != model_pb2.STAGE_ARCHIVED]
            revision = reply.revision
            if not reply.next_page_token:
                return models, revision
            request.page_token = reply.next_page_token
