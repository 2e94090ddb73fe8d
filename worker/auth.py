"""Who may call a worker: operators load and unload, routers generate and watch.

LoadModel and UnloadModel are for the worker operator (the admin token and/or, with
mTLS, an operator identity); Generate, GetStatus and WatchStatus for routers (the API key
the routers send and/or a router identity). Neither role stands in for the other. A role
with no credentials configured leaves its methods open (the local default).
"""

from __future__ import annotations

from collections.abc import Iterable

from modelyard.auth import AccessGate, Role, Rule, method_name
from modelyard.v1 import worker_pb2

SERVICE_NAME = worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name

ADMIN_METHODS = tuple(method_name(SERVICE_NAME, m) for m in ("LoadModel", "UnloadModel"))
ROUTER_METHODS = tuple(
    method_name(SERVICE_NAME, m) for m in ("Generate", "GetStatus", "WatchStatus")
)


def worker_gate(
    admin_token: str = "",
    api_key: str = "",
    *,
    operator_identities: Iterable[str] = (),
    router_identities: Iterable[str] = (),
) -> AccessGate:
    """The worker's interceptor: admin RPCs for the operator, the router's RPCs for routers."""
    operator = Role.of(
        "the worker operator",
        (admin_token,) if admin_token else (),
        operator_identities,
        "the value of the worker's MODELYARD_WORKER_ADMIN_TOKEN",
        "the worker's admin token",
    )
    router = Role.of(
        "a router",
        (api_key,) if api_key else (),
        router_identities,
        "routers: MODELYARD_ROUTER_WORKER_API_KEY",
        "the worker's API key",
    )
    return AccessGate([Rule(ADMIN_METHODS, operator), Rule(ROUTER_METHODS, router)])
