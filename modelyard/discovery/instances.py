"""What discovery hands out: one healthy instance of a service."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

REGISTRY_SERVICE = "modelyard-registry"
ROUTER_SERVICE = "modelyard-router"
WORKER_SERVICE = "modelyard-worker"


@dataclass(frozen=True)
class ServiceInstance:
    """One instance: its id, where to reach it, and the meta it registered with."""

    service_id: str
    host: str
    port: int
    meta: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"
