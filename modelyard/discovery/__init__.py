"""Service discovery shared by the three services: Consul when configured, static otherwise."""

from modelyard.discovery.instances import (
    REGISTRY_SERVICE,
    ROUTER_SERVICE,
    WORKER_SERVICE,
    ServiceInstance,
)
from modelyard.discovery.settings import DiscoverySettings

__all__ = [
    "REGISTRY_SERVICE",
    "ROUTER_SERVICE",
    "WORKER_SERVICE",
    "DiscoverySettings",
    "ServiceInstance",
]
