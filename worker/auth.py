"""Who may call a worker: operators load and unload, routers generate and watch.

LoadModel and UnloadModel need the admin token (and only it: an operator holds no
router key); Generate, GetStatus and WatchStatus need the API key the routers send.
A secret left empty leaves its methods open (the local default).
"""

from __future__ import annotations

from modelyard.auth import BearerGate, Guard, method_name
from modelyard.v1 import worker_pb2

SERVICE_NAME = worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name

ADMIN_METHODS = tuple(method_name(SERVICE_NAME, m) for m in ("LoadModel", "UnloadModel"))
ROUTER_METHODS = tuple(
    method_name(SERVICE_NAME, m) for m in ("Generate", "GetStatus", "WatchStatus")
)


def worker_gate(admin_token: str, api_key: str) -> BearerGate:
    """The worker's interceptor: admin RPCs need `admin_token`, the router's RPCs `api_key`."""
    return BearerGate(
        [
            Guard(
                ADMIN_METHODS,
                (admin_token,) if admin_token else (),
                "the worker's admin token",
                "the value of the worker's MODELYARD_WORKER_ADMIN_TOKEN",
            ),
            Guard(
                ROUTER_METHODS,
                (api_key,) if api_key else (),
                "the worker's API key",
                "routers: MODELYARD_ROUTER_WORKER_API_KEY",
            ),
        ]
    )
