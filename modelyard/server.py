"""One way to run a grpc.aio server: health, reflection, tracing, graceful stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from modelyard.limits import ServerLimits
from modelyard.telemetry import server_interceptors
from modelyard.tls import TlsSettings

log = logging.getLogger(__name__)

GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    # Accept the clients' keepalive pings (routers ping workers every 10 s, with or
    # without calls): the default minimum of 5 min between data-less pings would count
    # each as a strike and GOAWAY the channel after two. (gRPC core's name for the
    # server's minimum is min_ping_interval_without_data_ms; "min_recv_..." is ignored.)
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 2),
    # gRPC turns SO_REUSEPORT on by default: a second server on a port a running one
    # holds would start without error and take part of its traffic. Refuse instead.
    ("grpc.so_reuseport", 0),
]


@dataclass
class RunningServer:
    server: grpc.aio.Server
    health: health.aio.HealthServicer
    port: int
    service_names: Sequence[str]

    async def stop(self, grace_s: float = 5.0) -> None:
        """Report NOT_SERVING first so balancers drain, then stop accepting and finish calls."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


async def start_server(
    address: str,
    register: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    *,
    tls: TlsSettings | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    limits: ServerLimits | None = None,
    share_port: bool = False,
) -> RunningServer:
    """Build, bind and start a server with the given servicers plus health and reflection.

    `address` is host:port; port 0 picks a free port (returned in RunningServer.port).
    With `tls` enabled (a certificate configured) the port speaks only TLS (mTLS when
    `tls.mtls`); `interceptors` run after tracing, e.g. a `modelyard.auth.AccessGate`;
    `limits` bound message sizes and concurrent calls (defaults: `ServerLimits()`).
    `share_port`: SO_REUSEPORT, for sibling processes of one service on one port (the
    kernel spreads connections over them); off, a port in use is an error.
    """
    if tls is not None:
        tls.check_server()  # fail closed, before anything binds: never plaintext by mistake
    limits = limits or ServerLimits()
    server = grpc.aio.server(
        interceptors=[*server_interceptors(), *interceptors],
        options=[*_port_options(share_port), *limits.grpc_options()],
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
    )
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    try:
        if tls is not None and tls.enabled:
            port = server.add_secure_port(address, tls.server_credentials())
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # grpcio >= 1.55 raises where older ones returned 0
        port = 0
    if port == 0:
        raise OSError(f"cannot bind {address}: address in use or not available")
    await server.start()
    for name in ["", *service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, health_servicer, port, service_names)


def _port_options(share_port: bool) -> list[tuple[str, int]]:
    if not share_port:
        return GRPC_OPTIONS
    return [o for o in GRPC_OPTIONS if o[0] != "grpc.so_reuseport"] + [("grpc.so_reuseport", 1)]


async def wait_for_signal() -> None:
    """Return on SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def host_of(address: str) -> str:
    host, _, _ = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1"
