"""What the relay calls: look a request up before scheduling, replay a hit, store a
clean finish.

A hit is served by the router alone: GenerationStarted names the model version, route and
arm the entry was made for, with an empty worker_id and attempt 0 (no worker attempt was
made: attempt numbers of worker calls start at 1); the stored deltas follow, then
GenerationFinished with `cached: true`, the stored finish reason and usage, no cost, and
the router's own timings. The outcome is recorded as cached: no cost, no latency sample.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

from opentelemetry import trace

from modelyard.genai import response_attributes, usage_attributes
from modelyard.refs import key_of
from modelyard.v1 import common_pb2, model_pb2, router_pb2
from router.accounting import Accounting
from router.cache.cache import ResponseCache, ttl_of
from router.cache.entry import Entry, Recorder
from router.cache.flight import Flights
from router.cache.key import cache_key, cacheable
from router.catalog import Target
from router.stats import Outcome

HIT_ATTRIBUTE = "modelyard.cache.hit"
CACHE_HEADER = "x-modelyard-cache"  # on the OpenAI front's responses


def cache_header(started: common_pb2.GenerationStarted) -> dict[str, str]:
    """`hit` when the router answered from its cache (attempt 0: no worker attempt),
    `miss` when a worker did (the route may cache nothing at all)."""
    return {CACHE_HEADER: "hit" if started.attempt == 0 else "miss"}


@dataclass
class Lookup:
    """One request's dealings with the cache; an empty key: not cacheable here."""

    key: str = ""
    model: model_pb2.Model | None = None
    ttl_s: float = 0.0
    entry: Entry | None = None
    recorder: Recorder = field(default_factory=Recorder)
    leads: bool = False  # this miss leads the key's flight (router/cache/flight.py)
    stored: Entry | None = None  # what this miss stored, shared with its flight

    @property
    def hit(self) -> bool:
        return self.entry is not None

    def see(self, event: router_pb2.GenerateResponse) -> None:
        """Each relayed event of a miss, so a clean finish can be stored."""
        if self.key:
            self.recorder.see(event)


class CacheHook:
    def __init__(
        self,
        cache: ResponseCache | None,
        accounting: Accounting,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cache = cache
        self._acct = accounting
        self._clock = clock
        self._flights = Flights()

    async def lookup(
        self,
        request: router_pb2.GenerateRequest,
        request_id: str,
        target: Target,
        client: str,
        span: trace.Span,
        wait_s: float | None = None,
        output_ceiling: int = 0,
    ) -> Lookup:
        """The cached answer, if the route caches, the request is deterministic and one
        is stored (or an identical request in flight shares its answer within `wait_s`).
        Only a route's single resolved model version is looked up. A lookup that leads a
        flight must be `release`d."""
        policy = target.response_cache
        if (
            self._cache is None
            or policy is None
            or not policy.enabled
            or len(target.models) != 1
            or not cacheable(request.sampling)
        ):
            return Lookup()
        model = target.models[0]
        key = cache_key(
            request,
            model,
            client=client if policy.per_api_key else "",
            output_ceiling=output_ceiling,
        )
        entry = await self._cache.get(key)
        leads = False
        if entry is None:
            leads, entry = await self._flights.join(key, wait_s)
            if entry is not None:
                self._cache.count_shared()
        span.set_attribute(HIT_ATTRIBUTE, entry is not None)
        if entry is not None:  # what the relay states for a worker's answer, from the entry
            span.set_attributes(response_attributes(key_of(model), request_id))
            span.set_attributes(usage_attributes(entry.finished.usage))
        recorder = Recorder(self._cache.backend.max_entry_bytes)
        return Lookup(key, model, float(ttl_of(policy.ttl_seconds)), entry, recorder, leads)

    def release(self, look: Lookup) -> None:
        """The request is over: a flight it led shares what it stored (or nothing)."""
        if look.leads:
            self._flights.land(look.key, look.stored)

    async def replay(
        self,
        look: Lookup,
        *,
        request_id: str,
        target: Target,
        client: str,
        started_at: float,
    ) -> AsyncGenerator[router_pb2.GenerateResponse, None]:
        assert look.entry is not None and look.model is not None  # a hit
        model = look.model
        route_ms = (self._clock() - started_at) * 1000
        yield router_pb2.GenerateResponse(
            started=common_pb2.GenerationStarted(
                request_id=request_id,
                model=model.name,
                version=model.version,
                route=target.route,
                arm=target.arm,
                attempt=0,
            )
        )
        for delta in look.entry.deltas:
            yield router_pb2.GenerateResponse(delta=delta)
        done = common_pb2.GenerationFinished()
        done.CopyFrom(look.entry.finished)
        done.cached = True
        total_ms = (self._clock() - started_at) * 1000
        done.timings.CopyFrom(common_pb2.Timings(route_ms=route_ms, total_ms=total_ms))
        yield router_pb2.GenerateResponse(finished=done)
        outcome = Outcome(
            model=model.name,
            version=model.version,
            route=target.route,
            arm=target.arm,
            usage=done.usage,
            client=client,
            cached=True,
        )
        self._acct.cached(request_id, outcome)

    async def store(self, look: Lookup, served_by: model_pb2.Model) -> None:
        """Keep a miss's answer once it finished whole, if the model it was looked up for
        served it (a fallback's answer is another model's, under another key)."""
        if self._cache is None or not look.key or look.hit or look.model is None:
            return
        if key_of(served_by) != key_of(look.model):
            return
        entry = look.recorder.entry()
        if entry is not None:
            look.stored = entry
            await self._cache.put(look.key, entry, look.ttl_s)

    async def close(self) -> None:
        if self._cache is not None:
            await self._cache.close()
