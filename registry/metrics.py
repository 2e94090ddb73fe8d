"""Prometheus metrics of the registry, served on `metrics_port` when it is not 0."""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import Counter, Gauge, start_http_server

from modelyard.v1 import registry_pb2

log = logging.getLogger(__name__)

WRITES = Counter(
    "modelyard_registry_writes_total",
    "Catalogue writes that created a revision, by change kind.",
    ["kind"],
)
WATCHERS = Gauge("modelyard_registry_watchers", "Open Watch streams on this replica.")
REVISION = Gauge("modelyard_registry_revision", "Newest catalogue revision this replica knows.")
SNAPSHOTS = Counter(
    "modelyard_registry_watch_snapshots_total",
    "Snapshots sent to watchers, by reason (start, resume_too_old, behind_retention).",
    ["reason"],
)
SNAPSHOT_READS = Counter(
    "modelyard_registry_snapshot_reads_total",
    "Catalogue snapshots read from the database; watchers asking at once share one.",
)


def count_write(kind: registry_pb2.ChangeKind.ValueType, revision: int) -> None:
    WRITES.labels(registry_pb2.ChangeKind.Name(kind).removeprefix("CHANGE_KIND_").lower()).inc()
    REVISION.set(revision)


def serve_metrics(port: int, host: str = "0.0.0.0") -> Callable[[], None]:
    """Expose /metrics on a background thread (prometheus_client's own server); returns
    the function that stops it."""
    if not port:
        return lambda: None
    server, _thread = start_http_server(port, addr=host)
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server.shutdown
