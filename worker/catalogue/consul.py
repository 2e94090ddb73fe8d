"""The registry's address from Consul, for a worker given none: a healthy
`modelyard-registry` instance, looked up once at start (waiting a little for one)."""

from __future__ import annotations

import asyncio
import logging

from modelyard.discovery import REGISTRY_SERVICE, DiscoverySettings
from modelyard.discovery.consul import CALL_TIMEOUT_S, CONSUL_ERRORS, consul_client
from modelyard.discovery.watch import instances_of

log = logging.getLogger(__name__)


async def find_registry(settings: DiscoverySettings, wait_s: float = 10.0) -> str:
    """host:port of a healthy registry, or "" when none appears within `wait_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    delay = 0.25
    client = consul_client(settings)
    try:
        while True:
            try:
                async with asyncio.timeout(CALL_TIMEOUT_S):
                    _, entries = await client.health.service(REGISTRY_SERVICE, passing=True)
                found = instances_of(entries)
                if found:
                    log.info("registry from Consul: %s", found[0].address)
                    return found[0].address
            except CONSUL_ERRORS as err:
                log.debug("Consul %s: %s", settings.address, err)
            if loop.time() + delay > deadline:
                log.error(
                    "no healthy %s in Consul %s after %.0f s: this worker loads nothing; "
                    "set MODELYARD_WORKER_REGISTRY_ADDRESS",
                    REGISTRY_SERVICE,
                    settings.address,
                    wait_s,
                )
                return ""
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    finally:
        await client.close()
