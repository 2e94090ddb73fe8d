"""Who may call a worker: operators load and unload, routers generate and watch.

LoadModel and UnloadModel are for the worker operator (the admin token and/or, with
mTLS, an operator identity); Generate, Embed, GetStatus and WatchStatus for routers (the API key
the routers send and/or a router identity). Neither role stands in for the other. A role
with no credentials configured leaves its methods open (the local default).
"""

from __future__ import annotations

from collections.abc import Iterable

from modelyard.auth import AccessGate, Role, Rule, TicketAdmission, method_name
from modelyard.errors import PermissionDenied
from modelyard.refs import key_of
from modelyard.tickets import Claims, TicketVerifier
from modelyard.v1 import worker_pb2

SERVICE_NAME = worker_pb2.DESCRIPTOR.services_by_name["WorkerService"].full_name

ADMIN_METHODS = tuple(method_name(SERVICE_NAME, m) for m in ("LoadModel", "UnloadModel"))
GENERATE = method_name(SERVICE_NAME, "Generate")
EMBED = method_name(SERVICE_NAME, "Embed")
STATUS_METHODS = tuple(method_name(SERVICE_NAME, m) for m in ("GetStatus", "WatchStatus"))
ROUTER_METHODS = (GENERATE, EMBED, *STATUS_METHODS)


def _ticket_binding(request: worker_pb2.WorkerServiceGenerateRequest) -> tuple[str, str]:
    return request.request_id, key_of(request.model)


def _ticket_limits(claims: Claims, request: worker_pb2.WorkerServiceGenerateRequest) -> None:
    """A ticket that bounds the output admits no request that asks for more (or for no
    bound at all: the output ceiling the router prepared is part of what it granted)."""
    bound = claims.grant.max_tokens
    asked = request.sampling.max_tokens or request.max_output_tokens_ceiling
    if bound and not 0 < asked <= bound:
        raise PermissionDenied(
            f"the ticket admits at most {bound} output tokens; the request asks for "
            f"{asked or 'no bound'}: send the worker_request PickWorker returned",
            reason="TICKET_LIMIT",
        )


def worker_gate(
    admin_token: str = "",
    api_key: str = "",
    *,
    operator_identities: Iterable[str] = (),
    router_identities: Iterable[str] = (),
    tickets: TicketVerifier | None = None,
) -> AccessGate:
    """The worker's interceptor: admin RPCs for the operator, the router's RPCs for routers;
    with `tickets`, a router-signed ticket also admits one Generate (direct streams)."""
    operator = Role.of(
        "the worker operator",
        (admin_token,) if admin_token else (),
        operator_identities,
        "the value of the worker's MODELYARD_WORKER_ADMIN_TOKEN; "
        "CLI: --operator-token or MODELYARD_OPERATOR_TOKEN",
        "the worker's admin token",
    )
    router = Role.of(
        "a router",
        (api_key,) if api_key else (),
        router_identities,
        "routers: MODELYARD_ROUTER_WORKER_API_KEY",
        "the worker's API key",
    )
    admission = (
        TicketAdmission(tickets, _ticket_binding, _ticket_limits)
        if tickets and tickets.enabled
        else None
    )
    return AccessGate(
        [
            Rule(ADMIN_METHODS, operator),
            Rule((GENERATE,), router, tickets=admission),
            Rule((EMBED, *STATUS_METHODS), router),
        ]
    )
