"""Who may call the router: with API keys (or client identities) configured, every
RouterService call and every OpenAI front request needs one; without them (the local
default) the router is open.

Keys are named ("name:key" entries), so logs and usage say which key made a request.
Both fronts check the same `Rule`: the gRPC port through the `AccessGate` interceptor,
the HTTP front before it reads a request body (router/openai/app.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from modelyard.auth import AccessGate, Role, Rule, service_prefix
from modelyard.v1 import router_pb2

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name


def client_rule(api_keys: Iterable[str], identities: Iterable[str] = ()) -> Rule:
    """Every RouterService method is for clients holding one of `api_keys` (and, when
    `identities` are given, an mTLS certificate naming one of them)."""
    client = Role.of(
        "a client",
        api_keys,
        identities,
        "SDK: Client(api_key=...); CLI: --api-key or MODELYARD_API_KEY; "
        "OpenAI clients: their api_key",
        "an API key",
    )
    return Rule((service_prefix(SERVICE_NAME),), client)


def router_gate(api_keys: Iterable[str], identities: Iterable[str] = ()) -> AccessGate:
    """The router's server interceptor."""
    return AccessGate([client_rule(api_keys, identities)])
