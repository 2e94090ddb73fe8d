"""Who may call the registry: reads are open, writes need the admin token when one is set."""

from __future__ import annotations

from modelyard.auth import BearerGate, Guard, method_name
from modelyard.v1 import registry_pb2

SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name

WRITE_METHODS = tuple(
    method_name(SERVICE_NAME, m)
    for m in ("RegisterModel", "SetStage", "DeleteModel", "PutRoute", "DeleteRoute")
)


def registry_gate(admin_token: str) -> BearerGate:
    """The registry's interceptor: writes need `admin_token` (none: writes are open)."""
    return BearerGate(
        [
            Guard(
                WRITE_METHODS,
                (admin_token,) if admin_token else (),
                "the admin token",
                "CLI: --admin-token or MODELYARD_ADMIN_TOKEN",
            )
        ]
    )
