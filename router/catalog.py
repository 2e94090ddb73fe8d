"""Resolve a request's `model` field: a model, a route (with its A/B arm and fallbacks)
or "auto" (every model that fits, for the scheduler to choose among).

The registry is the source of truth. Once the `RegistryService.Watch` cache
(modelyard/catalogue_cache.py) has its first snapshot, names resolve from it
with no registry call, and keep resolving while the registry is down. Before that
(or against a registry without Watch) a small TTL cache over GetModel/ListModels
answers, also serving stale entries during an outage. Routes need the Watch cache.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

import grpc

from modelyard.catalogue_cache import RegistryCache
from modelyard.errors import (
    FailedPrecondition,
    ModelyardError,
    NotFound,
    Unavailable,
    from_rpc_error,
)
from modelyard.refs import AUTO, ModelRef, key_of, parse_ref
from modelyard.v1 import common_pb2, model_pb2, registry_pb2, registry_pb2_grpc
from router.ab import choose_arm
from router.ttl_cache import TtlCache

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# Registry answers that mean "cannot reach it", as opposed to "it said no".
_UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_PAGE_SIZE = 1000


@dataclass(frozen=True)
class AutoQuery:
    """What an "auto" request needs of a model (the objective is the scheduler's)."""

    chat: bool
    tags: tuple[str, ...] = ()
    min_context_length: int = 0
    embedding: bool = False  # an Embed request: embedding models only

    @classmethod
    def of(
        cls, chat: bool, hints: common_pb2.RoutingHints, *, embedding: bool = False
    ) -> AutoQuery:
        tags = tuple(sorted(hints.required_tags))
        return cls(chat, tags, hints.min_context_length, embedding)

    def describe(self) -> str:
        kind = "embedding" if self.embedding else "chat" if self.chat else "plain completion"
        parts = [kind]
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


@dataclass(frozen=True)
class Target:
    """What a request's `model` field resolved to: the models to schedule over (one,
    or several for "auto"), the fallbacks in order, and the route's defaults."""

    models: tuple[model_pb2.Model, ...]
    fallbacks: tuple[model_pb2.Model, ...] = ()
    route: str = ""
    arm: str = ""
    objective: common_pb2.Objective.ValueType = common_pb2.OBJECTIVE_UNSPECIFIED
    max_ttft_ms: float | None = None
    max_cost_per_1k: float | None = None
    response_cache: model_pb2.ResponseCachePolicy | None = None  # the route's, if any
    max_output_tokens_ceiling: int = 0  # the route's, for requests without max_tokens

    @property
    def name(self) -> str:
        return self.route or (key_of(self.models[0]) if len(self.models) == 1 else AUTO)

    @property
    def groups(self) -> tuple[tuple[model_pb2.Model, ...], ...]:
        """What to schedule over, in order: the models, then each fallback on its own."""
        return (self.models, *((m,) for m in self.fallbacks))


@dataclass(frozen=True)
class AutoPick:
    """ "" or "auto": every model that fits the request, for the scheduler to choose among."""

    query: AutoQuery


# A request's `model` field, parsed once: what the name means decides how it resolves.
Wanted: TypeAlias = AutoPick | ModelRef | model_pb2.Route


def parse_model_field(
    text: str, *, chat: bool, hints: common_pb2.RoutingHints, embedding: bool = False
) -> AutoPick | ModelRef:
    """ "auto" (or nothing) or a model reference; INVALID_ARGUMENT for a malformed name."""
    text = text.strip()
    if not text or text == AUTO:
        return AutoPick(AutoQuery.of(chat, hints, embedding=embedding))
    return parse_ref(text, "model")


def _fits(model: model_pb2.Model, query: AutoQuery) -> bool:
    caps = model.capabilities
    wanted = caps.embedding if query.embedding else caps.chat if query.chat else caps.completion
    return (
        wanted
        and set(query.tags) <= set(caps.tags)
        and (not query.min_context_length or caps.context_length >= query.min_context_length)
    )


def _production_first(models: list[model_pb2.Model]) -> tuple[model_pb2.Model, ...]:
    """The production versions when there are any, else all: the one "production first"."""
    production = [m for m in models if m.stage == model_pb2.STAGE_PRODUCTION]
    return tuple(production or models)


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
        cache: RegistryCache | None = None,
    ) -> None:
        self._stub = stub
        self._cache = cache
        self._address = registry_address
        self._timeout_s = call_timeout_s
        self._models: TtlCache[ModelRef, model_pb2.Model] = TtlCache(ttl_s, clock)
        self._auto: TtlCache[AutoQuery, tuple[model_pb2.Model, ...]] = TtlCache(ttl_s, clock)
        self._listing: TtlCache[str, Listing] = TtlCache(ttl_s, clock)

    @property
    def stub(self) -> registry_pb2_grpc.RegistryServiceAsyncStub:
        return self._stub

    @property
    def cache(self) -> RegistryCache | None:
        """The Watch cache once it holds a snapshot, else None."""
        return self._cache if self._cache is not None and self._cache.synced.is_set() else None

    async def target(
        self,
        model_field: str,
        *,
        chat: bool,
        hints: common_pb2.RoutingHints,
        timeout_s: float | None = None,
        embedding: bool = False,
    ) -> Target:
        """Resolve for scheduling: "auto" gives every fitting model (production ones when
        there are any), a route gives its A/B arm's model plus its fallbacks."""
        wanted = self._parse(model_field, hints, chat=chat, embedding=embedding)
        if isinstance(wanted, AutoPick):
            return Target(await self._fitting(wanted.query, timeout_s))
        if isinstance(wanted, ModelRef):
            return Target((await self._model(wanted, timeout_s),))
        return await self._route_target(wanted, hints.session_key, timeout_s)

    async def resolve(
        self,
        model_field: str,
        *,
        chat: bool,
        hints: common_pb2.RoutingHints | None = None,
        timeout_s: float | None = None,
    ) -> model_pb2.Model:
        """The one model version a `model` field names (routes aside).

        "name" is its newest production version (else the newest non-archived one),
        "name@version" is exact, and "" or "auto" is the first model that fits the
        request, production first.
        """
        wanted = parse_model_field(model_field, chat=chat, hints=hints or common_pb2.RoutingHints())
        if isinstance(wanted, AutoPick):
            return (await self._fitting(wanted.query, timeout_s))[0]
        return await self._model(wanted, timeout_s)

    async def list_servable(self, *, timeout_s: float | None = None) -> Listing:
        """All non-archived model versions, for RouterService.ListModels."""
        cache = self.cache
        if cache is not None:
            return Listing(tuple(cache.models()), cache.revision)
        return await self._through(
            self._listing, "all", lambda wait: self._list_all(timeout_s, wait), "the model list"
        )

    def _parse(self, model_field: str, hints: common_pb2.RoutingHints, **kind: bool) -> Wanted:
        # kind: chat, embedding (as parse_model_field takes them)
        wanted = parse_model_field(model_field, hints=hints, **kind)
        cache = self.cache
        if isinstance(wanted, ModelRef) and not wanted.version and cache is not None:
            route = cache.route(wanted.name)
            if route is not None and route.arms:
                return route
        return wanted

    async def _fitting(
        self, query: AutoQuery, timeout_s: float | None
    ) -> tuple[model_pb2.Model, ...]:
        """Every servable model that fits `query`, production ones only when there are any."""
        cache = self.cache
        if cache is not None:
            fitting = [m for m in cache.models() if _fits(m, query)]
        else:
            listed = await self._through(
                self._auto,
                query,
                lambda wait: self._list_fitting(query, timeout_s, wait),
                "the model list",
            )
            fitting = list(listed)
        models = _production_first(fitting)
        if not models:
            raise NotFound(
                f"no servable model supports {query.describe()}; name a model, or see "
                "`modelyard models list`",
                reason="NO_MODEL_FITS",
            )
        return models

    async def _route_target(
        self, route: model_pb2.Route, session_key: str, timeout_s: float | None
    ) -> Target:
        arm = choose_arm(route, session_key)
        primary = await self._model(parse_ref(arm.model, "model"), timeout_s)
        fallbacks: list[model_pb2.Model] = []
        for name in route.fallbacks:
            try:
                fallbacks.append(await self._model(parse_ref(name, "model"), timeout_s))
            except ModelyardError as err:
                log.warning("route %s: skipping fallback %s: %s", route.name, name, err)
        return Target(
            (primary,),
            tuple(fallbacks),
            route=route.name,
            arm=arm.name,
            objective=route.default_objective,
            max_ttft_ms=route.max_ttft_ms if route.HasField("max_ttft_ms") else None,
            max_cost_per_1k=(
                route.max_cost_per_1k_tokens if route.HasField("max_cost_per_1k_tokens") else None
            ),
            response_cache=route.response_cache if route.response_cache.enabled else None,
            max_output_tokens_ceiling=route.max_output_tokens_ceiling,
        )

    async def _model(self, ref: ModelRef, timeout_s: float | None) -> model_pb2.Model:
        cache = self.cache
        found = cache.model(ref.name, ref.version) if cache is not None else None
        if found is not None:
            model = found
        else:
            # Not in the Watch cache (or none yet): ask the registry. A model registered a
            # moment ago may not have reached this router's Watch stream yet.
            model = await self._through(
                self._models,
                ref,
                lambda wait: self._get_model(ref, timeout_s, wait),
                f"model '{ref}'",
            )
        if model.stage == model_pb2.STAGE_ARCHIVED:
            raise FailedPrecondition(
                f"model {key_of(model)} is archived and is never routed to; "
                "name a servable version (see `modelyard models list`)",
                reason="MODEL_ARCHIVED",
                metadata={"model": key_of(model)},
            )
        return model

    def routes(self) -> list[model_pb2.Route]:
        cache = self.cache
        return cache.routes() if cache is not None else []

    async def _through(
        self, cache: TtlCache[K, V], key: K, fetch: Callable[[bool], Awaitable[V]], what: str
    ) -> V:
        """`fetch(wait_for_ready)`: with nothing cached it waits (within its deadline) for a
        registry that is starting or reconnecting; with a stale copy it fails fast to it."""
        cached = cache.fresh(key)
        if cached is not None:
            return cached
        stale = cache.any_age(key)
        try:
            value = await fetch(stale is None)
        except grpc.aio.AioRpcError as err:
            if err.code() in _UNREACHABLE:
                if stale is not None:
                    log.warning(
                        "registry at %s unreachable (%s); serving %s from cache",
                        self._address,
                        err.code().name,
                        what,
                    )
                    return stale
                # gRPC's details name addresses and socket errors: they stay in this log.
                log.warning(
                    "registry at %s unreachable: %s %s",
                    self._address,
                    err.code().name,
                    err.details(),
                )
                raise Unavailable(
                    f"registry at {self._address} is unreachable and {what} is not cached; "
                    "retry once the registry answers",
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

    async def _get_model(
        self, ref: ModelRef, timeout_s: float | None, wait: bool
    ) -> model_pb2.Model:
        reply: registry_pb2.GetModelResponse = await self._stub.GetModel(
            registry_pb2.GetModelRequest(name=ref.name, version=ref.version),
            timeout=self._deadline(timeout_s),
            wait_for_ready=wait,
        )
        return reply.model

    async def _list_fitting(
        self, query: AutoQuery, timeout_s: float | None, wait: bool
    ) -> tuple[model_pb2.Model, ...]:
        request = registry_pb2.ListModelsRequest(
            require_chat=query.chat, require_completion=not query.chat, tags=list(query.tags)
        )
        models, _ = await self._list(request, timeout_s, wait)
        # The registry filters chat, completion and tags; `_fits` is the one definition.
        return tuple(m for m in models if _fits(m, query))

    async def _list_all(self, timeout_s: float | None, wait: bool) -> Listing:
        models, revision = await self._list(registry_pb2.ListModelsRequest(), timeout_s, wait)
        return Listing(tuple(models), revision)

    async def _list(
        self, request: registry_pb2.ListModelsRequest, timeout_s: float | None, wait: bool
    ) -> tuple[list[model_pb2.Model], int]:
        """Every non-archived model matching `request`, across pages."""
        request.page_size = _PAGE_SIZE
        models: list[model_pb2.Model] = []
        revision = 0
        while True:
            reply: registry_pb2.ListModelsResponse = await self._stub.ListModels(
                request, timeout=self._deadline(timeout_s), wait_for_ready=wait
            )
            models += [m for m in reply.models if m.stage != model_pb2.STAGE_ARCHIVED]
            revision = reply.revision
            if not reply.next_page_token:
                return models, revision
            request.page_token = reply.next_page_token
