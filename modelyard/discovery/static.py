"""Static discovery: a fixed list of host:port addresses (the single-machine default)."""

from __future__ import annotations

from collections.abc import Sequence

from modelyard.discovery.instances import ServiceInstance


def static_instances(addresses: Sequence[str]) -> list[ServiceInstance]:
    """One instance per distinct address, in the given order; the address is its id."""
    instances = []
    for address in dict.fromkeys(addresses):
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"address {address!r} is not host:port")
        instances.append(ServiceInstance(address, host.strip("[]"), int(port)))
    return instances
