"""Consul through py-consul's asyncio client: the client, and keeping a service registered.

Registration never blocks a service from starting: it runs in the background, retries
with backoff while the agent is unreachable, and registers again if the agent forgets
the service (an agent restart without persisted state). The health check is Consul's
gRPC check against grpc.health.v1, which every modelyard server answers.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
import consul
import consul.aio

from modelyard import __version__
from modelyard.discovery.settings import DiscoverySettings

log = logging.getLogger(__name__)

# Errors that mean "the agent did not do it": unreachable, refused, or an HTTP error.
CONSUL_ERRORS = (consul.ConsulException, aiohttp.ClientError, OSError, TimeoutError)
BACKOFF_S = (0.5, 10.0)
# How often a registered service checks that the agent still knows it.
RESYNC_S = 30.0
CALL_TIMEOUT_S = 5.0
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


def consul_client(settings: DiscoverySettings) -> consul.aio.Consul:
    """An asyncio client for the configured agent (call inside the event loop; close it)."""
    host, _, port = settings.address.rpartition(":")
    verify: bool | str = settings.ca_file or True
    cert = (settings.cert_file, settings.key_file) if settings.cert_file else None
    # py-consul hands aiohttp arguments it has deprecated; the behaviour is right.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return consul.aio.Consul(
            host=host.strip("[]") or "127.0.0.1",
            port=int(port),
            token=settings.token or None,
            scheme=settings.scheme,
            dc=settings.datacenter or None,
            verify=verify,
            cert=cert,
        )


def advertised_host(settings: DiscoverySettings, bind_address: str) -> str:
    """The host to register: configured, else the listen host unless it is a wildcard."""
    if settings.advertise_host:
        return settings.advertise_host
    host = bind_address.rpartition(":")[0]
    if host in _WILDCARD_HOSTS:
        return socket.gethostbyname(socket.gethostname())
    return host.strip("[]")


def _duration(seconds: float) -> str:
    """Seconds as a Go duration string, which is what Consul parses."""
    return f"{seconds:g}s"


@dataclass(frozen=True)
class ServiceSpec:
    """What one service registers: its name, id, where it listens and its meta."""

    name: str
    service_id: str
    host: str
    port: int
    grpc_service: str
    meta: Mapping[str, str] = field(default_factory=dict)
    # The service serves TLS: Consul's gRPC check must speak it too.
    grpc_use_tls: bool = False
    # The name the check verifies in the certificate: it dials an IP, which no SAN names.
    tls_server_name: str = ""

    def check(self, settings: DiscoverySettings) -> dict[str, object]:
        check: dict[str, object] = {
            # host:port/service asks grpc.health.v1 about this service, not the server.
            "GRPC": f"{self.host}:{self.port}/{self.grpc_service}",
            "GRPCUseTLS": self.grpc_use_tls,
            "Interval": _duration(settings.check_interval_s),
            "Timeout": _duration(settings.check_timeout_s),
        }
        if self.grpc_use_tls and self.tls_server_name:
            check["TLSServerName"] = self.tls_server_name
        if settings.deregister_after_s:
            check["DeregisterCriticalServiceAfter"] = _duration(settings.deregister_after_s)
        return check


class Registration(Protocol):
    async def close(self) -> None:
        """Deregister (best effort) and stop keeping the service registered."""


class _NoRegistration:
    async def close(self) -> None:
        return None


class ConsulRegistration:
    """Keeps one service registered with the agent until `close`."""

    def __init__(self, settings: DiscoverySettings, spec: ServiceSpec) -> None:
        self._settings = settings
        self.spec = spec
        self._task: asyncio.Task[None] | None = None
        self._client: consul.aio.Consul | None = None
        self.registered = asyncio.Event()

    def start(self) -> None:
        self._client = consul_client(self._settings)
        self._task = asyncio.create_task(self._keep_registered(), name=f"consul-{self.spec.name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        client, self._client = self._client, None
        if client is None:
            return  # never started, or closed already
        try:
            if self.registered.is_set():
                async with asyncio.timeout(CALL_TIMEOUT_S):
                    await client.agent.service.deregister(self.spec.service_id)
                log.info("deregistered %s from Consul", self.spec.service_id)
                # Still serving: watchers drop it before the server stops taking calls.
                await asyncio.sleep(self._settings.deregister_wait_s)
        except CONSUL_ERRORS as err:
            # The agent drops it once the check has been critical long enough.
            log.warning("could not deregister %s from Consul: %s", self.spec.service_id, err)
        finally:
            await client.close()

    async def _keep_registered(self) -> None:
        assert self._client is not None
        delay = BACKOFF_S[0]
        failing = ""
        while True:
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancel
                # that close() sends, and close() would then wait forever.
                async with asyncio.timeout(CALL_TIMEOUT_S):
                    known = await self._client.agent.services()
                if self.spec.service_id not in (known or {}):
                    async with asyncio.timeout(CALL_TIMEOUT_S):
                        await self._register(self._client)
                    log.info(
                        "registered %s as %s at %s:%d with Consul %s",
                        self.spec.name,
                        self.spec.service_id,
                        self.spec.host,
                        self.spec.port,
                        self._settings.address,
                    )
                self.registered.set()
                failing = ""
                delay = BACKOFF_S[0]
                await asyncio.sleep(RESYNC_S)
            except CONSUL_ERRORS as err:
                reason = f"{type(err).__name__}: {err}"
                if reason != failing:  # once per change of state, not once per retry
                    log.warning(
                        "cannot register %s with Consul %s (retrying): %s",
                        self.spec.service_id,
                        self._settings.address,
                        reason,
                    )
                    failing = reason
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, BACKOFF_S[1])

    async def _register(self, client: consul.aio.Consul) -> None:
        ok = await client.agent.service.register(
            self.spec.name,
            service_id=self.spec.service_id,
            address=self.spec.host,
            port=self.spec.port,
            meta={"version": __version__, **self.spec.meta},
            check=self.spec.check(self._settings),
            replace_existing_checks=True,
        )
        if not ok:
            raise consul.ConsulException("the agent did not accept the registration")


def register_service(
    *,
    name: str,
    bind_address: str,
    port: int,
    grpc_service: str,
    service_id: str = "",
    host: str = "",
    meta: Mapping[str, str] | None = None,
    settings: DiscoverySettings | None = None,
    tls: bool = False,
    tls_server_name: str = "",
) -> Registration:
    """Register this service with Consul in the background; a no-op when Consul is off.

    Call once the server listens (the agent's first health check may come at once) and
    `await registration.close()` before stopping the server, so routers stop first.
    `tls`: the server speaks TLS, so the agent's gRPC check uses TLS (`GRPCUseTLS`),
    verifying `tls_server_name` (a name in the service's certificate) when given.
    """
    settings = settings if settings is not None else DiscoverySettings()
    if not settings.enabled:
        return _NoRegistration()
    host = host or advertised_host(settings, bind_address)
    spec = ServiceSpec(
        name=name,
        service_id=service_id or f"{name}-{host}-{port}",
        host=host,
        port=port,
        grpc_service=grpc_service,
        meta=dict(meta or {}),
        grpc_use_tls=tls,
        tls_server_name=tls_server_name,
    )
    registration = ConsulRegistration(settings, spec)
    registration.start()
    return registration
