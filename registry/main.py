"""Run the registry: migrate and open the store, serve gRPC until SIGINT/SIGTERM, stop cleanly."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable

from modelyard.discovery import REGISTRY_SERVICE
from modelyard.discovery.consul import register_service
from modelyard.server import host_of, start_server, wait_for_signal
from modelyard.telemetry import setup_logging, setup_tracing, shutdown_tracing
from registry.auth import SERVICE_NAME, WRITE_METHODS, registry_gate
from registry.config import RegistrySettings
from registry.metrics import serve_metrics
from registry.service import add_to_server
from registry.store import open_store

log = logging.getLogger(__name__)

# In-flight calls get this long to finish after a stop signal.
STOP_GRACE_S = 5.0


async def serve(
    settings: RegistrySettings, *, on_ready: Callable[[int], None] | None = None
) -> None:
    """Serve until a stop signal; `on_ready` gets the bound port (useful with port 0)."""
    store = await open_store(
        settings.database_url,
        change_retention=settings.change_retention,
        poll_interval_s=settings.watch_poll_interval_s,
    )
    try:
        gate = registry_gate(
            settings.admin_token,
            reader_tokens=settings.reader_tokens,
            admin_identities=settings.admin_identities,
            reader_identities=settings.reader_identities,
        )
        running = await start_server(
            settings.address,
            functools.partial(add_to_server, store),
            [SERVICE_NAME],
            tls=settings.tls,
            limits=settings.limits,
            interceptors=[gate],
        )
        try:
            log.info(
                "registry listening on %s:%d (catalogue %s)",
                host_of(settings.address),
                running.port,
                store.engine.url.render_as_string(hide_password=True),
            )
            if gate.rule_for(WRITE_METHODS[0]) is None:
                log.info("no admin credentials configured: writes are open to every caller")
            stop_metrics = serve_metrics(
                settings.metrics_port, settings.metrics_host or host_of(settings.address)
            )
            try:
                registration = register_service(
                    name=REGISTRY_SERVICE,
                    bind_address=settings.address,
                    port=running.port,
                    grpc_service=SERVICE_NAME,
                    tls=settings.tls.enabled,  # Consul checks over TLS
                    tls_server_name=settings.tls.server_name,
                )
                if on_ready is not None:
                    on_ready(running.port)
                await wait_for_signal()
                log.info("registry stopping")
                await registration.close()  # deregister before draining
            finally:
                await asyncio.to_thread(stop_metrics)
        finally:
            await running.stop(STOP_GRACE_S)
    finally:
        await store.close()


def run(settings: RegistrySettings) -> None:
    """The process entry point behind `modelyard registry serve`."""
    setup_logging(settings.log_level)
    setup_tracing("modelyard-registry")
    try:
        asyncio.run(serve(settings))
    finally:
        shutdown_tracing()
