"""The worker process: wire settings, model manager and servicer to a gRPC server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from modelyard.server import RunningServer, host_of, start_server, wait_for_signal
from modelyard.telemetry import setup_logging, setup_tracing, shutdown_tracing
from modelyard.v1 import worker_pb2, worker_pb2_grpc
from worker.config import WorkerSettings
from worker.manager import ModelManager
from worker.metrics import serve_metrics
from worker.service import WorkerServicer
from worker.status_report import WorkerIdentity

log = logging.getLogger(__name__)

SERVICE_NAME = worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name
STOP_GRACE_S = 5.0


@dataclass
class RunningWorker:
    server: RunningServer
    manager: ModelManager
    identity: WorkerIdentity
    _stop_metrics: Callable[[], None] | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Drain: refuse new calls, let running ones finish for `grace_s`, then free the models."""
        self.manager.notifier.close()  # status watches end now instead of holding the grace
        await self.server.stop(grace_s)
        await self.manager.close()
        if self._stop_metrics is not None:
            await asyncio.to_thread(self._stop_metrics)


async def start_worker(settings: WorkerSettings) -> RunningWorker:
    """Start the worker's gRPC server (and /metrics if configured); returns once listening."""
    manager = ModelManager(settings)
    # The id and address may depend on the port bound below: placeholders until then.
    servicer = WorkerServicer(manager, WorkerIdentity(settings.worker_id, settings.address))

    def register(server: grpc.aio.Server) -> None:
        worker_pb2_grpc.add_WorkerServiceServicer_to_server(servicer, server)

    running = await start_server(settings.address, register, [SERVICE_NAME])
    servicer.identity = WorkerIdentity(
        worker_id=settings.resolved_worker_id(running.port),
        address=settings.resolved_address(running.port),
    )
    stop_metrics = None
    if settings.metrics_port:
        stop_metrics = serve_metrics(manager, host_of(settings.address), settings.metrics_port)
    return RunningWorker(running, manager, servicer.identity, stop_metrics)


async def serve(settings: WorkerSettings, *, on_ready: Callable[[int], None] | None = None) -> None:
    """Run the worker until SIGINT/SIGTERM, then stop gracefully and unload every model."""
    worker = await start_worker(settings)
    log.info(
        "worker %s listening on %s (advertised as %s)",
        worker.identity.worker_id,
        f"{host_of(settings.address)}:{worker.port}",
        worker.identity.address,
    )
    if on_ready is not None:
        on_ready(worker.port)
    try:
        await wait_for_signal()
        log.info("worker stopping")
    finally:
        await worker.stop()


def run(settings: WorkerSettings) -> None:
    setup_logging(settings.log_level)
    setup_tracing("modelyard-worker", instance_id=settings.worker_id)
    try:
        asyncio.run(serve(settings))
    finally:
        shutdown_tracing()
