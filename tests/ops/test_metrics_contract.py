"""Contract: every metric name the chart's autoscalers and alerts and the Grafana dashboard use
is exported by the live services of a local mesh (their /metrics, scraped).

Names come from the rendered gpu-keda value set (KEDA ScaledObjects, an HPA on an External
metric, the PrometheusRule) and from charts/modelyard/dashboards/*.json.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from modelyard.local_mesh import LocalMesh, free_port
from tests.ops.chart import (
    Rendered,
    dashboard_exprs,
    exported_names,
    is_exported,
    metric_names,
    promql_of,
)

pytestmark = pytest.mark.integration

SERVICES = ("registry", "worker", "router")


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str | None]]:
    """/metrics text of each service of a running mesh (None: nothing answers on its port)."""
    ports = {service: free_port() for service in SERVICES}
    env = {f"MODELYARD_{s.upper()}_METRICS_PORT": str(p) for s, p in ports.items()}
    mesh = LocalMesh(data_dir=tmp_path_factory.mktemp("mesh"), env=env, worker_threads=1)
    mesh.start()
    try:
        yield {service: scrape(port) for service, port in ports.items()}
    finally:
        mesh.stop()


def scrape(port: int, timeout_s: float = 10.0) -> str | None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
                body: bytes = reply.read()
                return body.decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                return None
            time.sleep(0.2)


@pytest.fixture(scope="module")
def used(rendered: dict[str, Rendered]) -> dict[str, set[str]]:
    exprs = promql_of(rendered["gpu-keda"].manifests)
    exprs.update(dashboard_exprs())
    return metric_names(exprs)


def test_chart_and_dashboard_use_metrics_of_every_service(used: dict[str, set[str]]) -> None:
    for service in SERVICES:
        assert any(n.startswith(f"modelyard_{service}_") for n in used), service
    assert "modelyard_worker_queued_tokens" in used


@pytest.mark.parametrize("service", SERVICES)
def test_used_metrics_are_exported(
    service: str, used: dict[str, set[str]], scraped: dict[str, str | None]
) -> None:
    wanted = {n: w for n, w in used.items() if n.startswith(f"modelyard_{service}_")}
    text = scraped[service]
    assert text is not None, (
        f"the {service} serves no /metrics (nothing answers on its "
        f"MODELYARD_{service.upper()}_METRICS_PORT); the chart and dashboard use "
        f"{', '.join(sorted(wanted))}"
    )
    exported = exported_names(text)
    missing = {n: sorted(w) for n, w in wanted.items() if not is_exported(n, exported)}
    assert not missing, f"{service} does not export metrics used by: {missing}"


def test_names_found_in_exposition() -> None:
    text = (
        "# HELP a_total h\n# TYPE a_total counter\n"
        'b_seconds_bucket{le="1"} 0\n# TYPE b_seconds histogram\n'
    )
    names = exported_names(text)
    assert is_exported("a_total", names)
    assert is_exported("b_seconds_bucket", names)
    assert is_exported("b_seconds_count", names)
    assert not is_exported("c", names)


def test_label_names_are_not_metric_names() -> None:
    expr = 'sum by (modelyard_io_pool) (modelyard_worker_queued_tokens{a="b"})'
    found = metric_names({"x": [expr]})
    assert set(found) == {"modelyard_worker_queued_tokens"}
