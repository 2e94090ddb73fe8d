"""Serve the HTTP front with uvicorn inside the router process, on the router's loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import grpc
import uvicorn

from modelyard.tls import TlsSettings, secure_or_insecure_channel
from modelyard.server import host_of
from modelyard.v1 import router_pb2_grpc
from router.openai.app import build_app

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the router owns SIGINT/SIGTERM and stops the front through `stop`


@dataclass
class HttpFront:
    server: uvicorn.Server
    task: asyncio.Task[None]
    channel: grpc.aio.Channel

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self.task), 10)
        if not self.task.done():
            self.task.cancel()
        await self.channel.close()


async def start_http_front(
    http_address: str, router_port: int, tls: TlsSettings | None = None
) -> HttpFront:
    """Listen on `http_address` and forward to the router's gRPC port over loopback.

    With `tls` enabled the loopback speaks TLS as the router's own client (its CA, and its
    certificate under mTLS), verifying the name `localhost` in the router's certificate.
    """
    # Loopback: each HTTP request becomes a RouterService call on this very process, so
    # both fronts share one code path, with deadlines and cancellation carried by gRPC.
    # API keys: the app passes each request's Authorization header through.
    loopback = tls if tls is not None and tls.enabled else None
    channel = secure_or_insecure_channel(
        f"127.0.0.1:{router_port}",
        loopback,
        options=[("grpc.ssl_target_name_override", "localhost")] if loopback else [],
    )
    stub = cast(
        "router_pb2_grpc.RouterServiceAsyncStub", router_pb2_grpc.RouterServiceStub(channel)
    )
    host = host_of(http_address)
    port = int(http_address.rpartition(":")[2])
    config = uvicorn.Config(
        build_app(stub),
        host=host,
        port=port,
        log_config=None,  # the router's logging setup stays in charge
        access_log=False,
        lifespan="off",
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(), name="openai-http-front")
    while not server.started:
        if task.done():
            await task  # re-raises why it could not start (e.g. the port is taken)
            raise OSError(f"the HTTP front could not listen on {http_address}")
        await asyncio.sleep(0.02)
    log.info("OpenAI-compatible HTTP front on http://%s:%d/v1", host, port)
    return HttpFront(server, task, channel)
