"""Feed the router's WorkerPool from Consul's healthy `modelyard-worker` instances.

The pool follows the healthy set: instances that appear are added, instances whose
check fails or that deregister are removed. While Consul is unreachable the watch
stops calling back, so the pool keeps the last known set. The registry is watched
too, so `ListWorkers`-style diagnostics and logs say when the configured registry
address is not (or no longer) among the healthy ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from modelyard.discovery import (
    REGISTRY_SERVICE,
    WORKER_SERVICE,
    DiscoverySettings,
    ServiceInstance,
)
from modelyard.discovery.watch import ConsulWatch
from router.workers import WorkerPool

log = logging.getLogger(__name__)


class ConsulDiscovery:
    """Two blocking-query watches: workers into the pool, and the registry's instances."""

    def __init__(
        self, settings: DiscoverySettings, pool: WorkerPool, *, registry_address: str = ""
    ) -> None:
        self._pool = pool
        self._registry_address = registry_address
        self.workers = ConsulWatch(settings, WORKER_SERVICE, self._on_workers)
        self.registries = ConsulWatch(settings, REGISTRY_SERVICE, self._on_registries)
        self.registry_addresses: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.workers.run(), name="consul-watch-workers"),
            asyncio.create_task(self.registries.run(), name="consul-watch-registry"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _on_workers(self, instances: Sequence[ServiceInstance]) -> None:
        self._pool.set_addresses([i.address for i in instances])

    async def _on_registries(self, instances: Sequence[ServiceInstance]) -> None:
        self.registry_addresses = [i.address for i in instances]
        if self._registry_address and self._registry_address not in self.registry_addresses:
            log.warning(
                "the configured registry %s is not among the healthy %s instances (%s)",
                self._registry_address,
                REGISTRY_SERVICE,
                ", ".join(self.registry_addresses) or "none",
            )


def start_discovery(
    settings: DiscoverySettings, pool: WorkerPool, *, registry_address: str
) -> ConsulDiscovery | None:
    """Start following Consul when it is configured; None means static discovery."""
    if not settings.enabled:
        return None
    if pool.workers:
        log.warning(
            "Consul discovery is on: the static workers (%s) are replaced by Consul's healthy set",
            ", ".join(h.address for h in pool.workers),
        )
    discovery = ConsulDiscovery(settings, pool, registry_address=registry_address)
    discovery.start()
    return discovery
