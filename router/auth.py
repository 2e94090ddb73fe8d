"""Who may call the router: with API keys (or client identities) configured, every
RouterService call and every OpenAI front request needs one; without them (the local
default) the router is open.

Keys are named ("name:key" entries), so logs and usage say which key made a request.
Both fronts check the same `Rule`: the gRPC port through the `AccessGate` interceptor,
the HTTP front before it reads a request body (router/openai/app.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from modelyard.auth import AccessGate, Role, Rule, method_name, service_prefix
from modelyard.v1 import router_pb2

SERVICE_NAME = router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name
# The mesh's traffic and its workers' addresses are the operators' view, not a client's.
OPERATOR_METHODS = tuple(method_name(SERVICE_NAME, m) for m in ("GetRoutingStats", "ListWorkers"))
OPERATOR_PATHS = ("/v1/stats",)
# Workers report direct streams' outcomes; a client must never report its own.
REPORTER_METHODS = tuple(method_name(SERVICE_NAME, m) for m in ("ReportOutcome", "ReportOutcomes"))
OPERATOR_ROLE_NAME = "an operator"
_CLIENT_HINT = (
    "SDK: Client(api_key=...); CLI: --api-key or MODELYARD_API_KEY; OpenAI clients: their api_key"
)


def client_role(api_keys: Iterable[str], identities: Iterable[str] = ()) -> Role:
    return Role.of("a client", api_keys, identities, _CLIENT_HINT, "an API key")


def operator_role(operator_keys: Iterable[str], client: Role) -> Role:
    """Holders of `operator_keys`; with none set it is open only where clients are, and
    closed (sealed) on a router whose clients need keys."""
    role = Role.of(
        OPERATOR_ROLE_NAME,
        operator_keys,
        (),
        "set MODELYARD_ROUTER_OPERATOR_KEYS and send one like an API key",
        "an operator key",
    )
    return dataclasses.replace(role, sealed=client.configured and not role.configured)


def client_rule(
    api_keys: Iterable[str], identities: Iterable[str] = (), operator_keys: Iterable[str] = ()
) -> Rule:
    """Every RouterService method is for clients holding one of `api_keys` (and, when
    `identities` are given, an mTLS certificate naming one of them), and for operators."""
    client = client_role(api_keys, identities)
    operator = operator_role(operator_keys, client)
    also = (operator,) if operator.keys else ()
    return Rule((service_prefix(SERVICE_NAME),), client, also)


def operator_rule(
    api_keys: Iterable[str], identities: Iterable[str] = (), operator_keys: Iterable[str] = ()
) -> Rule:
    """OPERATOR_METHODS (and OPERATOR_PATHS on the HTTP front) are for operators only."""
    operator = operator_role(operator_keys, client_role(api_keys, identities))
    return Rule(OPERATOR_METHODS + OPERATOR_PATHS, operator)


def reporter_rule(
    client: Role, reporter_tokens: Iterable[str] = (), reporter_identities: Iterable[str] = ()
) -> Rule:
    """REPORTER_METHODS are for workers holding a reporter token (and/or identity); with
    none set they are open only where clients are (the local default), else closed."""
    role = Role.of(
        "a worker reporting outcomes",
        reporter_tokens,
        reporter_identities,
        "set MODELYARD_ROUTER_OUTCOME_REPORTER_TOKENS and the worker's "
        "MODELYARD_WORKER_OUTCOME_TOKEN",
        "a reporter token",
    )
    sealed = client.configured and not role.configured
    return Rule(REPORTER_METHODS, dataclasses.replace(role, sealed=sealed))


def router_rules(
    api_keys: Sequence[str],
    identities: Sequence[str] = (),
    operator_keys: Sequence[str] = (),
    *,
    reporter_tokens: Sequence[str] = (),
    reporter_identities: Sequence[str] = (),
) -> list[Rule]:
    """The rules both fronts check, the narrower (reporter, operator) ones first."""
    return [
        reporter_rule(client_role(api_keys, identities), reporter_tokens, reporter_identities),
        operator_rule(api_keys, identities, operator_keys),
        client_rule(api_keys, identities, operator_keys),
    ]


def router_gate(
    api_keys: Sequence[str],
    identities: Sequence[str] = (),
    operator_keys: Sequence[str] = (),
    *,
    reporter_tokens: Sequence[str] = (),
    reporter_identities: Sequence[str] = (),
) -> AccessGate:
    """The router's server interceptor."""
    return AccessGate(
        router_rules(
            api_keys,
            identities,
            operator_keys,
            reporter_tokens=reporter_tokens,
            reporter_identities=reporter_identities,
        )
    )
