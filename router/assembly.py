"""Wire the router's parts from its settings: the one place that knows all of them,
shared by router.main and the tests."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass

from modelyard.catalogue_cache import RegistryCache, follow
from modelyard.loop_call import loop_caller
from modelyard.refs import key_of
from modelyard.tickets import TicketSigner
from modelyard.v1 import registry_pb2_grpc, worker_pb2
from router.accounting import Accounting
from router.admission import RouterAdmission
from router.api import RouterApi
from router.breaker import OPEN, BreakerBoard, BreakerPolicy
from router.cache import ResponseCache
from router.cache.build import build_response_cache
from router.catalog import Catalog
from router.config import RouterSettings
from router.direct.desk import TicketDesk
from router.metrics import RouterMetrics
from router.outcomes import MeshOutcomes
from router.outcomes.ops import OutcomeOps
from router.relay import Relay
from router.relay.embedding import EmbedRelay
from router.scheduling.profiles import build_profiles
from router.service import RouterServicer
from router.state.latency import LatencyEstimates
from router.stats import FeedbackBook, RoutingStats
from router.workers import WorkerPool


@dataclass
class RouterParts:
    catalog: Catalog
    cache: RegistryCache
    relay: Relay
    api: RouterApi
    accounting: Accounting
    metrics: RouterMetrics
    servicer: RouterServicer
    outcomes: OutcomeOps
    response_cache: ResponseCache | None = None
    desk: TicketDesk | None = None


def build(
    settings: RouterSettings,
    registry: registry_pb2_grpc.RegistryServiceAsyncStub,
    pool: WorkerPool,
    mesh: MeshOutcomes | None = None,
) -> RouterParts:
    """`mesh`: ship outcomes to the registry and answer stats and feedback mesh-wide."""
    cache = RegistryCache()
    catalog = Catalog(
        registry,
        registry_address=settings.registry_address,
        ttl_s=settings.catalog_ttl_s,
        call_timeout_s=settings.registry_timeout_s,
        cache=cache,
    )
    metrics = RouterMetrics()
    if mesh is not None:
        metrics.registry.register(mesh.shipper.collector())
    accounting = _accounting(settings, metrics, mesh)
    breakers = accounting.breakers
    pool.on_removed.append(accounting.forget_worker)
    response_cache = build_response_cache(settings, metrics.response_cache)
    relay, embed_relay = _relays(settings, catalog, pool, accounting, response_cache)
    # Scrapes run on prometheus_client's thread; the cache changes on the loop.
    metrics.watch_healthy_workers(loop_caller(lambda: _healthy_workers(cache, pool, breakers)))
    metrics.watch_breakers(
        loop_caller(lambda: {h.address: breakers.state(h.address) for h in pool.workers})
    )
    api = RouterApi(relay, catalog, pool, embed_relay)
    outcomes = OutcomeOps(accounting.stats, mesh)
    desk = _ticket_desk(settings, relay, accounting)
    servicer = RouterServicer(api, pool, accounting, settings.limits, outcomes=outcomes, desk=desk)
    return RouterParts(
        catalog, cache, relay, api, accounting, metrics, servicer, outcomes, response_cache, desk
    )


def _relays(
    settings: RouterSettings,
    catalog: Catalog,
    pool: WorkerPool,
    accounting: Accounting,
    response_cache: ResponseCache | None,
) -> tuple[Relay, EmbedRelay]:
    """Generations and embeddings: the same profiles, attempt budget and admission."""
    profiles = build_profiles(
        settings.profile_weights,
        settings.profile_pickers,
        sample_size=settings.scheduling_sample_size,
    )
    relay = Relay(
        catalog,
        pool,
        profiles=profiles,
        accounting=accounting,
        silence_timeout_s=settings.silence_timeout_s,
        stream_silence_timeout_s=settings.stream_silence_timeout_s,
        client_policy=settings.client_policy(),
        admission=RouterAdmission(settings.max_in_flight, settings.max_in_flight_per_key),
        response_cache=response_cache,
        max_attempts=settings.max_attempts,
        max_total_attempts=settings.max_total_attempts,
        connect_timeout_s=settings.connect_timeout_s,
    )
    embed_relay = EmbedRelay(
        catalog,
        pool,
        profiles=profiles,
        accounting=accounting,
        client_policy=settings.client_policy(),
        admission=relay.admission,
        max_attempts=settings.max_attempts,
        max_total_attempts=settings.max_total_attempts,
        connect_timeout_s=settings.connect_timeout_s,
    )
    return relay, embed_relay


def _ticket_desk(settings: RouterSettings, relay: Relay, accounting: Accounting) -> TicketDesk:
    """Direct streams (PickWorker, ReportOutcome); without a ticket key PickWorker says how
    to configure one."""
    signer = (
        TicketSigner.from_setting(settings.ticket_key, ttl_s=settings.ticket_ttl_s)
        if settings.ticket_key
        else None
    )
    return TicketDesk(relay, accounting, signer, settings.router_id or socket.gethostname())


def _accounting(
    settings: RouterSettings, metrics: RouterMetrics, mesh: MeshOutcomes | None
) -> Accounting:
    breakers = BreakerBoard(
        BreakerPolicy(
            consecutive_failures=settings.breaker_failures,
            error_rate=settings.breaker_error_rate,
            open_s=settings.breaker_open_s,
        ),
    )
    return Accounting(
        breakers,
        LatencyEstimates(),
        RoutingStats(
            reference_usd_per_1k=settings.reference_usd_per_1k_tokens,
            feedback=FeedbackBook(settings.feedback_max_entries, settings.feedback_ttl_s),
        ),
        metrics,
        outcomes=mesh,
    )


def _healthy_workers(
    cache: RegistryCache, pool: WorkerPool, breakers: BreakerBoard
) -> dict[str, int]:
    """Per model version: the workers that hold it warm, report status and are not open."""
    counts: dict[str, int] = {}
    for model in cache.models():
        counts[key_of(model)] = sum(
            1
            for h in pool.workers
            if h.watching
            and breakers.state(h.address) != OPEN
            and h.residency(model) == worker_pb2.RESIDENCY_STATE_WARM
        )
    return counts


def start_watch(parts: RouterParts, settings: RouterSettings) -> asyncio.Task[None]:
    """Follow the registry's Watch in the background until `stop_watch`."""
    return asyncio.create_task(
        follow(parts.cache, parts.catalog.stub, settings.registry_address), name="registry-watch"
    )


async def stop_watch(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
