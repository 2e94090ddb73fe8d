"""Run the router: connect to registry and workers, serve gRPC until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import cast

import grpc

from modelyard.server import host_of, start_server, wait_for_signal
from modelyard.telemetry import (
    client_interceptors,
    setup_logging,
    setup_tracing,
    shutdown_tracing,
)
from modelyard.v1 import registry_pb2_grpc
from router.catalog import Catalog
from router.config import RouterSettings
from router.relay import Relay
from router.service import SERVICE_NAME, RouterServicer, add_to_server
from router.workers import CHANNEL_OPTIONS, WarmFirstPicker, WorkerPool

log = logging.getLogger(__name__)

# In-flight streams get this long to finish after a stop signal.
STOP_GRACE_S = 5.0


async def serve(settings: RouterSettings, *, on_ready: Callable[[int], None] | None = None) -> None:
    """Serve until a stop signal; `on_ready` gets the bound port (useful with port 0)."""
    registry_channel = grpc.aio.insecure_channel(
        settings.registry_address, options=CHANNEL_OPTIONS, interceptors=client_interceptors()
    )
    # The stub factory's overload cannot tell that this channel is async.
    registry = cast(
        "registry_pb2_grpc.RegistryServiceAsyncStub",
        registry_pb2_grpc.RegistryServiceStub(registry_channel),
    )
    catalog = Catalog(
        registry,
        registry_address=settings.registry_address,
        ttl_s=settings.catalog_ttl_s,
        call_timeout_s=settings.registry_timeout_s,
    )
    pool = WorkerPool(settings.workers)
    pool.start()
    relay = Relay(
        catalog,
        pool,
        WarmFirstPicker(),
        max_attempts=settings.max_attempts,
        connect_timeout_s=settings.connect_timeout_s,
    )
    try:
        running = await start_server(
            settings.address,
            functools.partial(add_to_server, RouterServicer(relay, catalog, pool)),
            [SERVICE_NAME],
        )
        try:
            log.info(
                "router listening on %s:%d (registry %s, workers %s)",
                host_of(settings.address),
                running.port,
                settings.registry_address,
                ", ".join(settings.workers) or "none",
            )
            if on_ready is not None:
                on_ready(running.port)
            await wait_for_signal()
            log.info("router stopping")
        finally:
            await running.stop(STOP_GRACE_S)
    finally:
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
