"""The catalogue of the registry Consul lists, for a worker given no registry address: a
healthy `modelyard-registry` instance, followed with blocking queries, so a registry that
starts after the worker, or moves to another host, is picked up without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from modelyard.discovery import REGISTRY_SERVICE, DiscoverySettings
from modelyard.discovery.instances import ServiceInstance
from modelyard.discovery.watch import ConsulWatch
from modelyard.errors import Unavailable
from modelyard.refs import ModelKey
from modelyard.v1 import model_pb2
from worker.catalogue.registry import RegistryCatalogue

log = logging.getLogger(__name__)


class ConsulRegistryCatalogue:
    """Resolves through the registry Consul lists as healthy, whichever that is now.

    It keeps its registry while Consul still lists it (or lists none: a flapping check
    or an agent restart is no reason to drop a working connection), and moves to the first
    listed one otherwise."""

    def __init__(
        self,
        settings: DiscoverySettings,
        open_at: Callable[[str], RegistryCatalogue],
        *,
        first_wait_s: float = 10.0,
    ) -> None:
        self._settings = settings
        self._open_at = open_at
        # Resolves this soon after the start wait for Consul's first answer (preloads).
        self._first_wait_s = first_wait_s
        self._waits_until = 0.0
        self._watch = ConsulWatch(settings, REGISTRY_SERVICE, self._on_change)
        self._task: asyncio.Task[None] | None = None
        self.current: RegistryCatalogue | None = None
        self.found = asyncio.Event()  # set once a registry was listed

    def start(self) -> None:
        self._waits_until = asyncio.get_running_loop().time() + self._first_wait_s
        self._task = asyncio.create_task(self._watch.run(), name="consul-registry")

    async def _on_change(self, instances: Sequence[ServiceInstance]) -> None:
        addresses = [i.address for i in instances]
        old = self.current
        if not addresses or (old is not None and old.address in addresses):
            return
        log.info("registry from Consul: %s", addresses[0])
        self.current = self._open_at(addresses[0])
        self.found.set()
        if old is not None:
            log.warning("registry %s left Consul's healthy set: now %s", old.address, addresses[0])
            await old.close()

    async def resolve(self, key: ModelKey) -> model_pb2.Model:
        left = self._waits_until - asyncio.get_running_loop().time()
        if self.current is None and left > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self.found.wait()
        if self.current is None:
            raise Unavailable(
                f"cannot resolve {key}: no healthy {REGISTRY_SERVICE} in Consul "
                f"{self._settings.address} yet; start a registry there, or set "
                "MODELYARD_WORKER_REGISTRY_ADDRESS",
                reason="NO_REGISTRY",
                metadata={"model": key},
            )
        return await self.current.resolve(key)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.current is not None:
            await self.current.close()
