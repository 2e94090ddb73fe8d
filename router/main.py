"""Run the router: connect to registry and workers, serve gRPC until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import cast

from modelyard.discovery import ROUTER_SERVICE
from modelyard.discovery.consul import register_service
from modelyard.discovery.settings import DiscoverySettings
from modelyard.auth import bearer_interceptors
from modelyard.security import RouterAuthSettings, router_gate
from modelyard.tls import secure_or_insecure_channel, tls_from_env
from modelyard.server import host_of, start_server, wait_for_signal
from modelyard.telemetry import (
    client_interceptors,
    setup_logging,
    setup_tracing,
    shutdown_tracing,
)
from modelyard.v1 import registry_pb2_grpc
from router.assembly import build, start_watch, stop_watch
from router.config import RouterSettings
from router.discovery import start_discovery
from router.metrics import serve_metrics
from router.openai import start_http_front
from router.service import SERVICE_NAME, add_to_server
from router.workers import CHANNEL_OPTIONS, WorkerPool

log = logging.getLogger(__name__)

# In-flight streams get this long to finish after a stop signal.
STOP_GRACE_S = 5.0


async def serve(settings: RouterSettings, *, on_ready: Callable[[int], None] | None = None) -> None:
    """Serve until a stop signal; `on_ready` gets the bound port (useful with port 0)."""
    # -- security: MODELYARD_ROUTER_TLS_* (server and outgoing channels), _API_KEYS,
    # _WORKER_API_KEY (modelyard/security.py) --
    tls = tls_from_env("router")
    auth = RouterAuthSettings()
    worker_interceptors = [*client_interceptors(), *bearer_interceptors(auth.worker_api_key)]
    registry_channel = secure_or_insecure_channel(
        settings.registry_address, tls, client_interceptors(), CHANNEL_OPTIONS
    )
    # -- end security --
    # The stub factory's overload cannot tell that this channel is async.
    registry = cast(
        "registry_pb2_grpc.RegistryServiceAsyncStub",
        registry_pb2_grpc.RegistryServiceStub(registry_channel),
    )
    pool = WorkerPool(
        settings.workers,
        connect=lambda address: secure_or_insecure_channel(
            address, tls, worker_interceptors, CHANNEL_OPTIONS
        ),
    )
    pool.start()
    parts = build(settings, registry, pool)
    registry_watch = start_watch(parts, settings)
    stop_metrics = (
        serve_metrics(parts.metrics, host_of(settings.address), settings.metrics_port)
        if settings.metrics_port
        else None
    )
    consul = DiscoverySettings()
    discovery = start_discovery(consul, pool, registry_address=settings.registry_address)
    try:
        running = await start_server(
            settings.address,
            functools.partial(add_to_server, parts.servicer),
            [SERVICE_NAME],
            tls=tls,
            interceptors=[router_gate(auth)],
        )
        try:
            log.info(
                "router listening on %s:%d (registry %s, workers %s)",
                host_of(settings.address),
                running.port,
                settings.registry_address,
                ", ".join(settings.workers) or "none",
            )
            registration = register_service(
                name=ROUTER_SERVICE,
                bind_address=settings.address,
                port=running.port,
                grpc_service=SERVICE_NAME,
                settings=consul,
                tls=tls.enabled,
            )
            # OpenAI-compatible HTTP front (issue 5): a loopback client of this server.
            front = (
                await start_http_front(settings.http_address, running.port, tls)
                if settings.http_address
                else None
            )
            if on_ready is not None:
                on_ready(running.port)
            await wait_for_signal()
            log.info("router stopping")
            await registration.close()
            if front is not None:
                await front.stop()
        finally:
            await running.stop(STOP_GRACE_S)
    finally:
        if discovery is not None:
            await discovery.close()
        if stop_metrics is not None:
            stop_metrics()
        await stop_watch(registry_watch)
        await pool.close()
        await registry_channel.close()


def run(settings: RouterSettings) -> None:
    """The process entry point behind `modelyard router serve`."""
    setup_logging(settings.log_level)
    setup_tracing("modelyard-router")
    try:
        asyncio.run(serve(settings))
    finally:
        shutdown_tracing()
