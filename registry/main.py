"""Run the registry: migrate and open the store, serve gRPC until SIGINT/SIGTERM, stop cleanly."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable

import grpc

from modelyard.auth import AccessGate
from modelyard.discovery import REGISTRY_SERVICE
from modelyard.discovery.consul import register_service
from modelyard.server import host_of, start_server, wait_for_signal
from modelyard.telemetry import setup_logging, setup_tracing, shutdown_tracing
from registry.auth import OUTCOME_SERVICE_NAME, SERVICE_NAME, WRITE_METHODS, registry_gate
from registry.config import RegistrySettings
from registry.metrics import serve_metrics
from registry.outcome_fold import start_folding, stop_folding
from registry.outcome_service import add_to_server as add_outcome_service
from registry.outcomes import OutcomeStore, Retention
from registry.rollout.controller import RolloutController, start_controller, stop_controller
from registry.service import add_to_server
from registry.store import RegistryStore, open_store

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
        gate = _gate(settings)
        outcomes = _outcome_store(settings, store)
        folding = start_folding(outcomes, settings.outcome_fold_interval_s)
        rollouts = start_controller(RolloutController(store), settings.rollout_interval_seconds)
        running = await start_server(
            settings.address,
            functools.partial(_add_services, store, outcomes),
            [SERVICE_NAME, OUTCOME_SERVICE_NAME],
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
            await stop_folding(folding)
            await stop_controller(rollouts)
    finally:
        await store.close()


def _gate(settings: RegistrySettings) -> AccessGate:
    return registry_gate(
        settings.admin_token,
        reader_tokens=settings.reader_tokens,
        admin_identities=settings.admin_identities,
        reader_identities=settings.reader_identities,
        outcome_writer_tokens=settings.outcome_writer_tokens,
        outcome_writer_identities=settings.outcome_writer_identities,
    )


def _outcome_store(settings: RegistrySettings, store: RegistryStore) -> OutcomeStore:
    return OutcomeStore(
        store.engine,
        retention=Retention(
            raw_s=settings.outcome_retention_s,
            window_s=settings.outcome_window_s,
            windows_s=settings.outcome_window_retention_s,
        ),
    )


def _add_services(store: RegistryStore, outcomes: OutcomeStore, server: grpc.aio.Server) -> None:
    add_to_server(store, server)
    add_outcome_service(outcomes, server)


def run(settings: RegistrySettings) -> None:
    """The process entry point behind `modelyard registry serve`."""
    setup_logging(settings.log_level)
    setup_tracing("modelyard-registry")
    try:
        asyncio.run(serve(settings))
    finally:
        shutdown_tracing()
