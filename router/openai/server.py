"""Serve the HTTP front with uvicorn inside the router process, on the router's loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry

from modelyard.server import host_of
from modelyard.tls import TlsSettings
from router.openai.admission import FrontLimits
from router.openai.app import RouterOperations, build_app
from router.openai.outcomes import StatsOperations

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the router owns SIGINT/SIGTERM and stops the front through `stop`


@dataclass
class HttpFront:
    server: uvicorn.Server
    task: asyncio.Task[None]

    @property
    def port(self) -> int:
        """The bound port (useful when the address asked for port 0)."""
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(10):
                await asyncio.shield(self.task)
        if not self.task.done():
            self.task.cancel()


async def start_http_front(
    http_address: str,
    router: RouterOperations,
    *,
    api_keys: Sequence[str] = (),
    operator_keys: Sequence[str] = (),
    limits: FrontLimits | None = None,
    tls: TlsSettings | None = None,
    ignore_unknown: bool = False,
    serving: Callable[[], bool] = lambda: True,
    metrics: CollectorRegistry | None = None,
    outcomes: StatsOperations | None = None,
    share_port: bool = False,
) -> HttpFront:
    """Listen on `http_address` and serve the OpenAI API over `router`, in process.
    `api_keys` (none: open) are checked on every request but /health and /metrics before
    its body is read; `limits` bound bodies and requests in flight; with a certificate in
    `tls` the front speaks HTTPS only (the same certificate, and client certificates with
    mtls). `ignore_unknown`, `serving`, `metrics` and `outcomes`: see `build_app`.
    `share_port`: SO_REUSEPORT, for sibling router processes on one port."""
    host = host_of(http_address)
    port = int(http_address.rpartition(":")[2])
    config = uvicorn.Config(
        build_app(
            router,
            api_keys=api_keys,
            operator_keys=operator_keys,
            limits=limits,
            ignore_unknown=ignore_unknown,
            serving=serving,
            metrics=metrics,
            outcomes=outcomes,
        ),
        host=host,
        port=port,
        log_config=None,  # the router's logging setup stays in charge
        access_log=False,
        lifespan="off",
        **_ssl_options(tls),
    )
    # Load now: an unreadable certificate or key stops the router here, not in the task.
    config.load()
    server = _Server(config)
    sockets = [_shared_socket(host, port)] if share_port else None
    task = asyncio.create_task(server.serve(sockets), name="openai-http-front")
    while not server.started:
        if task.done():
            await task  # re-raises why it could not start (e.g. the port is taken)
            raise OSError(f"the HTTP front could not listen on {http_address}")
        await asyncio.sleep(0.02)
    scheme = "https" if config.is_ssl else "http"
    log.info("OpenAI-compatible HTTP front on %s://%s:%d/v1", scheme, host, port)
    return HttpFront(server, task)


def _shared_socket(host: str, port: int) -> socket.socket:
    """A socket bound with SO_REUSEPORT (uvicorn's own binding has no such option)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _ssl_options(tls: TlsSettings | None) -> dict[str, Any]:
    """uvicorn's TLS options for `tls`; raises rather than fall back to plaintext."""
    if tls is None:
        return {}
    tls.check_server()  # the same fail-closed checks as the gRPC port
    if not tls.enabled:
        return {}
    options: dict[str, Any] = {"ssl_certfile": tls.cert_file, "ssl_keyfile": tls.key_file}
    if tls.mtls:
        options |= {"ssl_ca_certs": tls.ca_file, "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return options
