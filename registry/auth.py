"""Who may call the registry: the admin writes the catalogue, readers (routers, workers)
read it.

Writes need the admin role: the admin token and/or, with mTLS, a certificate naming an
admin identity. Reads need the reader role (a reader token and/or identity) or the admin
role. A role with no credentials configured leaves its methods open (the local default).
"""

from __future__ import annotations

from collections.abc import Iterable

from modelyard.auth import AccessGate, Role, Rule, method_name, service_prefix
from modelyard.v1 import registry_pb2

SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name

WRITE_METHODS = tuple(
    method_name(SERVICE_NAME, m)
    for m in ("RegisterModel", "SetStage", "DeleteModel", "PutRoute", "DeleteRoute")
)


def admin_role(admin_token: str = "", identities: Iterable[str] = ()) -> Role:
    return Role.of(
        "the registry admin",
        (admin_token,) if admin_token else (),
        identities,
        "CLI: --admin-token or MODELYARD_ADMIN_TOKEN",
        "the admin token",
    )


def registry_gate(
    admin_token: str = "",
    *,
    reader_tokens: Iterable[str] = (),
    admin_identities: Iterable[str] = (),
    reader_identities: Iterable[str] = (),
) -> AccessGate:
    """The registry's interceptor: writes for the admin, everything else for readers."""
    admin = admin_role(admin_token, admin_identities)
    reader = Role.of(
        "a registry reader",
        reader_tokens,
        reader_identities,
        "routers: MODELYARD_ROUTER_REGISTRY_TOKEN; workers: MODELYARD_WORKER_REGISTRY_TOKEN; "
        "CLI: --registry-token or MODELYARD_REGISTRY_TOKEN",
        "a reader token",
    )
    # Rules are tried in order: the write methods first, then the rest of the service.
    return AccessGate(
        [Rule(WRITE_METHODS, admin), Rule((service_prefix(SERVICE_NAME),), reader, (admin,))]
    )
