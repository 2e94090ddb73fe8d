"""Who may call the router: with API keys configured, every RouterService call and every
OpenAI front request needs one; without them (the local default) the router is open.

Both fronts check the same `Guard`: the gRPC port through the `BearerGate` interceptor,
the HTTP front before it reads a request body (router/openai/app.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from modelyard.auth import BearerGate, Guard, service_prefix
from modelyard.v1 import router_pb2

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name


def client_guard(api_keys: Sequence[str]) -> Guard:
    """Every RouterService method needs one of `api_keys` (none: the guard is off)."""
    return Guard(
        (service_prefix(SERVICE_NAME),),
        tuple(k for k in api_keys if k),
        "an API key",
        "SDK: Client(api_key=...); CLI: --api-key or MODELYARD_API_KEY; "
        "OpenAI clients: their api_key",
    )


def router_gate(api_keys: Sequence[str]) -> BearerGate:
    """The router's server interceptor."""
    return BearerGate([client_guard(api_keys)])
