"""The worker process: build every collaborator once from the settings and wire them to a server.

settings -> catalogue (registry or file: what may load) and artifact store -> model
loader (+ engine factories) -> model manager -> servicer, behind the worker's gate, on
one gRPC server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2

from modelyard.auth import AccessGate
from modelyard.discovery import WORKER_SERVICE
from modelyard.discovery.consul import register_service
from modelyard.discovery.settings import DiscoverySettings
from modelyard.output_length import OutputEstimate
from modelyard.server import RunningServer, host_of, start_server, wait_for_signal
from modelyard.telemetry import setup_logging, setup_tracing, shutdown_tracing
from modelyard.tickets import TicketVerifier
from modelyard.v1 import common_pb2, worker_pb2_grpc
from worker.artifacts import ArtifactStore
from worker.auth import SERVICE_NAME, worker_gate
from worker.catalogue import Catalogue, open_catalogue
from worker.config import WorkerSettings
from worker.counters import ChangeNotifier
from worker.engines import EngineFactory, available_engines
from worker.metrics import serve_metrics
from worker.outcome_reports import OutcomeReporter
from worker.output_plan import OutputPlanner
from worker.residency import ModelLoader, ModelManager
from worker.residency.preload import preload, read_preload
from worker.residency.state import PreloadEntry
from worker.service import WorkerServicer
from worker.status import WorkerIdentity, detect_device

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0
REPORT_FLUSH_S = 2.0
# Health service name that turns SERVING once every preloaded model is warm (a pod's
# readiness probe asks for it; liveness asks for the server as a whole).
PRELOADED = "modelyard.worker.preloaded"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

__all__ = [
    "PRELOADED",
    "SERVICE_NAME",
    "RunningWorker",
    "build_manager",
    "run",
    "serve",
    "start_worker",
]


@dataclass
class RunningWorker:
    server: RunningServer
    manager: ModelManager
    identity: WorkerIdentity
    catalogue: Catalogue
    # Loads the preload list in the background: the worker serves meanwhile.
    preloading: asyncio.Future[None] | None = None
    _stop_metrics: Callable[[], None] | None = field(default=None, repr=False)
    # What requests without max_tokens are planned at (per-model expected output).
    outputs: OutputPlanner = field(default_factory=OutputPlanner)
    # Outcomes of direct (ticketed) generations, on their way to the routers.
    reports: OutcomeReporter | None = None

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Drain: refuse new calls, let running ones finish for `grace_s`, then free the models."""
        self.manager.notifier.close()  # status watches end now instead of holding the grace
        if self.preloading is not None:
            self.preloading.cancel()
        await self.server.stop(grace_s)
        if self.reports is not None:  # the last direct streams' outcomes, briefly
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.reports.flush(), REPORT_FLUSH_S)
            await self.reports.close()
        self.manager.loader.store.close()  # downloads in progress end at their next block
        await self.manager.close()
        await self.catalogue.close()
        if self._stop_metrics is not None:
            await asyncio.to_thread(self._stop_metrics)


def build_manager(
    settings: WorkerSettings,
    *,
    store: ArtifactStore | None = None,
    engines: Mapping[common_pb2.Engine.ValueType, EngineFactory] | None = None,
    notifier: ChangeNotifier | None = None,
) -> ModelManager:
    """The model manager and what it is given: the artifact store and the engine factories
    (by default the store of `settings.artifacts` and the engines installed here)."""
    store = store if store is not None else ArtifactStore(settings.artifacts)
    engines = engines if engines is not None else available_engines(sim=settings.sim_engine)
    return ModelManager(settings, ModelLoader(settings, store, engines), notifier=notifier)


async def start_worker(
    settings: WorkerSettings,
    *,
    catalogue: Catalogue | None = None,
    store: ArtifactStore | None = None,
) -> RunningWorker:
    """Start the worker's gRPC server (and /metrics if configured); returns once listening.

    `catalogue` and `store` replace the ones the settings describe (tests)."""
    # Read first: a malformed preload or catalogue file stops the worker before it listens.
    entries = read_preload(Path(settings.preload)) if settings.preload else []
    if catalogue is None:
        catalogue = open_catalogue(settings, DiscoverySettings())
    try:
        manager = build_manager(settings, store=store)
    except BaseException:
        await catalogue.close()
        raise
    device, device_name = detect_device(manager.engines)
    # The id and address may depend on the port bound below: placeholders until then.
    identity = WorkerIdentity(settings.worker_id, settings.address, device, device_name)
    servicer = _servicer(settings, manager, identity, catalogue)
    outputs = servicer.outputs

    def register(server: grpc.aio.Server) -> None:
        worker_pb2_grpc.add_WorkerServiceServicer_to_server(servicer, server)

    try:
        running = await start_server(
            settings.address,
            register,
            [SERVICE_NAME],
            tls=settings.tls,
            limits=settings.limits,
            interceptors=[_gate(settings)],
        )
    except BaseException:
        await catalogue.close()
        raise
    servicer.identity = dataclasses.replace(
        identity,
        worker_id=settings.resolved_worker_id(running.port),
        address=settings.resolved_address(running.port),
    )
    stop_metrics = None
    if settings.metrics_port:
        host = settings.metrics_host or host_of(settings.address)
        stop_metrics = serve_metrics(manager, host, settings.metrics_port, outputs.estimate)
    preloading = await _start_preloading(manager, catalogue, entries, running.health)
    return RunningWorker(
        running,
        manager,
        servicer.identity,
        catalogue,
        preloading,
        stop_metrics,
        outputs,
        servicer.reports,
    )


def _servicer(
    settings: WorkerSettings, manager: ModelManager, identity: WorkerIdentity, catalogue: Catalogue
) -> WorkerServicer:
    outputs = OutputPlanner(
        ceiling=settings.max_output_tokens_ceiling,
        estimate=OutputEstimate(settings.expected_output_tokens),
    )
    # Direct streams' outcomes go to the routers the settings name, never to one a ticket
    # or a client names.
    reports = OutcomeReporter(
        settings.outcome_routers,
        token=settings.outcome_token,
        tls=settings.tls,
        linger_s=settings.outcome_linger_ms / 1000.0,
    )
    return WorkerServicer(
        manager,
        identity,
        catalogue,
        limits=settings.limits,
        keepalive_s=settings.generate_keepalive_s,
        stream_interval_s=settings.stream_interval_ms / 1000.0,
        outputs=outputs,
        reports=reports,
    )


def _gate(settings: WorkerSettings) -> AccessGate:
    """Who may call which RPC: operators, the routers, tickets (worker/auth.py)."""
    return worker_gate(
        settings.admin_token,
        settings.api_key,
        operator_identities=settings.operator_identities,
        router_identities=settings.router_identities,
        tickets=TicketVerifier.from_files(settings.ticket_keys),
    )


async def _start_preloading(
    manager: ModelManager,
    catalogue: Catalogue,
    entries: list[PreloadEntry],
    health_servicer: health.aio.HealthServicer,
) -> asyncio.Future[None] | None:
    """Ready at once without preloads; else in the background, ready once they are warm."""
    await health_servicer.set(PRELOADED, NOT_SERVING if entries else SERVING)
    if not entries:
        return None
    return asyncio.ensure_future(_preload_then_ready(manager, catalogue, entries, health_servicer))


async def _preload_then_ready(
    manager: ModelManager,
    catalogue: Catalogue,
    entries: list[PreloadEntry],
    health_servicer: health.aio.HealthServicer,
) -> None:
    failed = await preload(manager, catalogue.resolve, entries)
    if failed:
        # Stay unready: a pool whose pods lack their models should not take their traffic.
        log.error("not ready: preloads failed for %s", ", ".join(failed))
        return
    await health_servicer.set(PRELOADED, SERVING)


async def serve(settings: WorkerSettings, *, on_ready: Callable[[int], None] | None = None) -> None:
    """Run the worker until SIGINT/SIGTERM, then stop gracefully and unload every model."""
    worker = await start_worker(settings)
    log.info(
        "worker %s listening on %s (advertised as %s)",
        worker.identity.worker_id,
        f"{host_of(settings.address)}:{worker.port}",
        worker.identity.address,
    )
    # A no-op unless MODELYARD_CONSUL_ADDRESS is set.
    host, _, port = worker.identity.address.rpartition(":")
    registration = register_service(
        name=WORKER_SERVICE,
        bind_address=settings.address,
        port=int(port),
        host=host.strip("[]"),
        service_id=worker.identity.worker_id,
        grpc_service=SERVICE_NAME,
        tls=settings.tls.enabled,  # Consul checks over TLS
        tls_server_name=settings.tls.server_name,
        meta={
            "engines": ",".join(
                common_pb2.Engine.Name(e).removeprefix("ENGINE_").lower()
                for e in worker.manager.engines
            ),
            "device": worker.identity.device,
        },
    )
    if on_ready is not None:
        on_ready(worker.port)
    try:
        await wait_for_signal()
        log.info("worker stopping")
    finally:
        await registration.close()  # deregister before draining
        await worker.stop()


def run(settings: WorkerSettings) -> None:
    setup_logging(settings.log_level)
    setup_tracing("modelyard-worker", instance_id=settings.worker_id)
    try:
        asyncio.run(serve(settings))
    finally:
        shutdown_tracing()
