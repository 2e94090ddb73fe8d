"""Run the router: connect to registry and workers, serve gRPC (and the OpenAI front)
until SIGINT/SIGTERM, then stop everything in the reverse order it started."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import cast

import grpc

from modelyard.bearer import bearer_interceptors
from modelyard.channel_options import CHANNEL_OPTIONS
from modelyard.discovery import ROUTER_SERVICE
from modelyard.discovery.consul import Registration, register_service
from modelyard.discovery.settings import DiscoverySettings
from modelyard.server import host_of, start_server, wait_for_signal
from modelyard.telemetry import (
    client_interceptors,
    setup_logging,
    setup_tracing,
    shutdown_tracing,
)
from modelyard.tls import secure_or_insecure_channel
from modelyard.v1 import outcomes_pb2_grpc, registry_pb2_grpc
from router.assembly import RouterParts, build, start_watch, stop_watch
from router.auth import SERVICE_NAME, router_gate
from router.config import RouterSettings
from router.discovery import start_discovery
from router.metrics import serve_metrics
from router.openai.admission import FrontLimits
from router.openai.server import start_http_front
from router.outcomes import MeshOutcomes, OutcomeShipper
from router.service import add_to_server
from router.workers import WorkerPool

log = logging.getLogger(__name__)

# In-flight streams get this long to finish after a stop signal.
STOP_GRACE_S = 5.0


@dataclass
class RunningRouter:
    """A started router; `stop` undoes the start, last part first."""

    port: int
    parts: RouterParts
    _stack: AsyncExitStack

    async def stop(self) -> None:
        await self._stack.aclose()


async def start_router(settings: RouterSettings, *, sibling: int | None = None) -> RunningRouter:
    """Start every part of the router; returns once the gRPC port (and HTTP front) listen.
    `sibling`: this process's index among the `settings.processes` sharing the ports
    (router/processes.py); None when it runs alone."""
    shared = sibling is not None
    stack = AsyncExitStack()
    try:
        parts = await _start_parts(settings, stack)
        running = await start_server(
            settings.address,
            functools.partial(add_to_server, parts.servicer),
            [SERVICE_NAME],
            tls=settings.tls,
            limits=settings.limits,
            interceptors=[
                router_gate(
                    settings.api_keys,
                    settings.client_identities,
                    settings.operator_keys,
                    reporter_tokens=settings.outcome_reporter_tokens,
                    reporter_identities=settings.outcome_reporter_identities,
                )
            ],
            share_port=shared,
        )
        stack.push_async_callback(running.stop, STOP_GRACE_S)
        # /health on the HTTP front: serving from here until a stop begins.
        serving = asyncio.Event()
        serving.set()
        if settings.http_address:
            front = await start_http_front(
                settings.http_address,
                parts.api,
                api_keys=settings.api_keys,
                operator_keys=settings.operator_keys,
                limits=FrontLimits(settings.http_max_body_bytes, settings.http_max_concurrency),
                tls=settings.tls,
                ignore_unknown=settings.http_ignore_unknown_params,
                serving=serving.is_set,
                metrics=parts.metrics.registry,
                outcomes=parts.outcomes,
                share_port=shared,
            )
            stack.push_async_callback(front.stop)
        # Last in, first out: Consul stops sending clients here before anything stops.
        # Siblings share the first one's service id (name, host, port): it registers alone.
        if not sibling:
            stack.push_async_callback(_register(settings, running.port).close)
        stack.callback(serving.clear)  # last in, first out: the first step of a stop
    except BaseException:
        await stack.aclose()
        raise
    return RunningRouter(running.port, parts, stack)


def _register(settings: RouterSettings, port: int) -> Registration:
    return register_service(
        name=ROUTER_SERVICE,
        bind_address=settings.address,
        port=port,
        grpc_service=SERVICE_NAME,
        tls=settings.tls.enabled,
        tls_server_name=settings.tls.server_name,
    )


async def _start_parts(settings: RouterSettings, stack: AsyncExitStack) -> RouterParts:
    """The channels, the worker pool and the logic behind the port, each closed by `stack`."""
    registry_channel = secure_or_insecure_channel(
        settings.registry_address,
        settings.tls,
        [*client_interceptors(), *bearer_interceptors(settings.registry_token)],
        CHANNEL_OPTIONS,
    )
    stack.push_async_callback(registry_channel.close)
    pool = WorkerPool(
        settings.workers,
        connect=lambda address: secure_or_insecure_channel(
            address, settings.tls, None, CHANNEL_OPTIONS
        ),
        api_key=settings.worker_api_key,
    )
    pool.start()
    stack.push_async_callback(pool.close)
    # The stub factory's overload cannot tell that this channel is async.
    registry = cast(
        "registry_pb2_grpc.RegistryServiceAsyncStub",
        registry_pb2_grpc.RegistryServiceStub(registry_channel),
    )
    parts = build(settings, registry, pool, _mesh_outcomes(settings, registry_channel, stack))
    if parts.response_cache is not None:
        stack.push_async_callback(parts.response_cache.close)
    stack.push_async_callback(stop_watch, start_watch(parts, settings))
    if settings.metrics_port:
        stack.callback(
            serve_metrics(
                parts.metrics,
                settings.metrics_host or host_of(settings.address),
                settings.metrics_port,
            )
        )
    discovery = start_discovery(
        DiscoverySettings(), pool, registry_address=settings.registry_address
    )
    if discovery is not None:
        stack.push_async_callback(discovery.close)
    return parts


def _mesh_outcomes(
    settings: RouterSettings, reader_channel: grpc.aio.Channel, stack: AsyncExitStack
) -> MeshOutcomes | None:
    """Outcomes shipped to the registry (with the outcome-writer token, on a channel of
    their own), stats and feedback read mesh-wide; None when turned off."""
    if not settings.outcome_buffer:
        return None
    writer_channel = secure_or_insecure_channel(
        settings.registry_address,
        settings.tls,
        [*client_interceptors(), *bearer_interceptors(settings.outcome_token)],
        CHANNEL_OPTIONS,
    )
    stack.push_async_callback(writer_channel.close)
    writer = cast(
        "outcomes_pb2_grpc.OutcomeServiceAsyncStub",
        outcomes_pb2_grpc.OutcomeServiceStub(writer_channel),
    )
    reader = cast(
        "outcomes_pb2_grpc.OutcomeServiceAsyncStub",
        outcomes_pb2_grpc.OutcomeServiceStub(reader_channel),
    )
    shipper = OutcomeShipper(
        writer,
        capacity=settings.outcome_buffer,
        interval_s=settings.outcome_flush_interval_s,
        timeout_s=settings.registry_timeout_s,
    )
    shipper.start()
    # Unwound after the servers stopped: the last requests' outcomes are shipped too.
    stack.push_async_callback(shipper.close)
    return MeshOutcomes(
        writer,
        reader,
        shipper,
        router_id=settings.router_id or socket.gethostname(),
        reference_usd_per_1k=settings.reference_usd_per_1k_tokens,
        call_timeout_s=settings.registry_timeout_s,
        feedback_wait_s=settings.outcome_feedback_wait_s,
    )


async def serve(
    settings: RouterSettings,
    *,
    on_ready: Callable[[int], None] | None = None,
    sibling: int | None = None,
) -> None:
    """Serve until a stop signal; `on_ready` gets the bound port (useful with port 0)."""
    router = await start_router(settings, sibling=sibling)
    try:
        log.info(
            "router listening on %s:%d (registry %s, workers %s)",
            host_of(settings.address),
            router.port,
            settings.registry_address,
            ", ".join(settings.workers) or "none",
        )
        if on_ready is not None:
            on_ready(router.port)
        await wait_for_signal()
        log.info("router stopping")
    finally:
        await router.stop()


def run(settings: RouterSettings, *, sibling: int | None = None) -> None:
    """One router process (router/processes.py runs several)."""
    setup_logging(settings.log_level)
    setup_tracing("modelyard-router")
    try:
        asyncio.run(serve(settings, sibling=sibling))
    finally:
        shutdown_tracing()
