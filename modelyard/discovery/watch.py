"""Follow the healthy instances of one service with Consul blocking queries.

One cycle is one `GET /v1/health/service/<name>?passing=1&index=N&wait=W`: it returns
as soon as the set changes (or after W), so a change reaches the callback within one
cycle. While the agent is unreachable the callback is not called: whoever follows the
set keeps the last one it was given. The index handling follows Consul's
blocking-query guidance (reset when it goes backwards, never below 1).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from modelyard.discovery.consul import BACKOFF_S, CONSUL_ERRORS, consul_client
from modelyard.discovery.instances import ServiceInstance
from modelyard.discovery.settings import DiscoverySettings

log = logging.getLogger(__name__)

OnChange = Callable[[Sequence[ServiceInstance]], Awaitable[None]]
# Consul adds up to wait/16 of jitter; the HTTP call gets that plus a margin.
_CALL_MARGIN_S = 5.0
# Blocking queries that return at once (an index bug, a flapping check) are rate limited.
_MIN_CYCLE_S = 0.05


def instances_of(entries: Sequence[Any]) -> list[ServiceInstance]:
    """ServiceInstances from /v1/health/service entries, sorted by id."""
    out = []
    for entry in entries:
        service = entry.get("Service") or {}
        node = entry.get("Node") or {}
        host = service.get("Address") or node.get("Address") or ""
        port = service.get("Port") or 0
        if not host or not port:
            continue
        out.append(
            ServiceInstance(
                service_id=str(service.get("ID") or f"{host}:{port}"),
                host=str(host),
                port=int(port),
                meta={str(k): str(v) for k, v in (service.get("Meta") or {}).items()},
            )
        )
    return sorted(out, key=lambda i: i.service_id)


def next_index(previous: int, returned: int) -> int:
    """The index for the next blocking query, per Consul's guidance."""
    if returned < 1:
        return 1
    if returned < previous:
        return 0  # went backwards (e.g. a restored snapshot): start over
    return returned


class ConsulWatch:
    """Calls `on_change` with the healthy instances of `service` whenever they change."""

    def __init__(
        self,
        settings: DiscoverySettings,
        service: str,
        on_change: OnChange,
        *,
        backoff_s: tuple[float, float] = BACKOFF_S,
    ) -> None:
        self._settings = settings
        self.service = service
        self._on_change = on_change
        self._backoff_s = backoff_s
        self.last: list[ServiceInstance] | None = None
        self.reachable: bool | None = None

    async def run(self) -> None:
        """Watch until cancelled."""
        client = consul_client(self._settings)
        try:
            await self._loop(client)
        finally:
            await client.close()

    async def _loop(self, client: Any) -> None:
        index = 0
        delay = self._backoff_s[0]
        failing = ""
        wait = f"{self._settings.wait_s:g}s"
        timeout = self._settings.wait_s * (1 + 1 / 16) + _CALL_MARGIN_S
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                async with asyncio.timeout(timeout):  # not wait_for: it can swallow a cancel
                    returned, entries = await client.health.service(
                        self.service, passing=True, index=index or None, wait=wait
                    )
            except CONSUL_ERRORS as err:
                reason = f"{type(err).__name__}: {err}"
                if reason != failing:  # log once per change of state, not per retry
                    kept = "nothing yet" if self.last is None else f"{len(self.last)} instance(s)"
                    log.warning(
                        "Consul %s: cannot watch %s (%s); keeping the last known set: %s",
                        self._settings.address,
                        self.service,
                        reason,
                        kept,
                    )
                    failing = reason
                self.reachable = False
                index = 0  # the agent may have restarted with a fresh index
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self._backoff_s[1])
                continue
            if failing:
                log.info(
                    "Consul %s reachable again: watching %s", self._settings.address, self.service
                )
                failing = ""
            self.reachable = True
            delay = self._backoff_s[0]
            index = next_index(index, int(returned))
            instances = instances_of(entries or [])
            if instances != self.last:
                log.info(
                    "%s: %d healthy instance(s): %s",
                    self.service,
                    len(instances),
                    ", ".join(i.address for i in instances) or "none",
                )
                self.last = instances
                await self._on_change(instances)
            elapsed = loop.time() - started
            if elapsed < _MIN_CYCLE_S:
                await asyncio.sleep(_MIN_CYCLE_S - elapsed)
