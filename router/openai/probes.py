"""/health and /metrics on the HTTP port, for load balancers, kubelets and Prometheus
that reach the router over HTTP only.

Neither needs the API key (Admission lets OPEN_PATHS through, and never counts them
against the concurrency limit): probes and scrapers carry no client key, /health says only
up or down, and /metrics holds what the router's own metrics port already serves without
a key (counts by model, arm, worker and API key *name*, never a key or a prompt). The
chart's Ingress publishes /v1 only; inside the cluster the NetworkPolicies decide who
reaches the port.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

HEALTH = "/health"
METRICS = "/metrics"
OPEN_PATHS = frozenset({HEALTH, METRICS})


def probe_routes(serving: Callable[[], bool], registry: CollectorRegistry | None) -> list[Route]:
    """GET /health: 200 while `serving()`, 503 once the router stops; GET /metrics: the
    Prometheus exposition of `registry` (absent without one)."""

    async def health(request: Request) -> Response:
        if serving():
            return JSONResponse({"status": "serving"})
        return JSONResponse({"status": "not_serving"}, status_code=503)

    routes = [Route(HEALTH, health, methods=["GET"])]
    if registry is not None:

        async def metrics(request: Request) -> Response:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

        routes.append(Route(METRICS, metrics, methods=["GET"]))
    return routes
