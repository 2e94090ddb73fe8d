"""Where a /metrics endpoint answers: for tests of the services' metrics_host setting."""

from __future__ import annotations

import urllib.request

from modelyard import local_mesh

# Another loopback address (all of 127/8 is loopback on Linux): an interface that is not
# the host of the services' listen address.
OTHER_HOST = "127.0.0.2"


def free_port(host: str = OTHER_HOST) -> int:
    return local_mesh.free_port(host)


def answers_metrics(host: str, port: int) -> bool:
    """Whether http://host:port/metrics answers 200 (False when nothing listens)."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False
