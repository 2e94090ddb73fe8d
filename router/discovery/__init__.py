"""Where the router's workers (and registry) come from: Consul or the static list."""

from router.discovery.consul import ConsulDiscovery, start_discovery

__all__ = ["ConsulDiscovery", "start_discovery"]
