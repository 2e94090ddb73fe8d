"""Who may call the registry: the admin writes the catalogue, readers (routers, workers)
read it, outcome writers (routers) record outcomes and feedback.

Writes need the admin role: the admin token and/or, with mTLS, a certificate naming an
admin identity. Reads need the reader role (a reader token and/or identity) or the admin
role (ControlRollout is a write). RecordOutcomes, AttachFeedback and RecordEvaluation
(`modelyard eval --record`) need the outcome-writer role (or the admin): a router never
holds the admin token, and a reader cannot write outcomes; QueryOutcomeStats and
ListEvaluations are reads. A role with no credentials configured leaves its methods open (the local
default).
"""

from __future__ import annotations

from collections.abc import Iterable

from modelyard.auth import AccessGate, Role, Rule, method_name, service_prefix
from modelyard.v1 import outcomes_pb2, registry_pb2

SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
OUTCOME_SERVICE_NAME = outcomes_pb2.DESCRIPTOR.services_by_name["OutcomeService"].full_name

WRITE_METHODS = tuple(
    method_name(SERVICE_NAME, m)
    for m in (
        "RegisterModel",
        "SetStage",
        "DeleteModel",
        "PutRoute",
        "DeleteRoute",
        "ControlRollout",
    )
)
OUTCOME_WRITE_METHODS = tuple(
    method_name(OUTCOME_SERVICE_NAME, m)
    for m in ("RecordOutcomes", "AttachFeedback", "RecordEvaluation")
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
    outcome_writer_tokens: Iterable[str] = (),
    outcome_writer_identities: Iterable[str] = (),
) -> AccessGate:
    """The registry's interceptor: catalogue writes for the admin, outcome writes for
    outcome writers, everything else for readers."""
    admin = admin_role(admin_token, admin_identities)
    reader = Role.of(
        "a registry reader",
        reader_tokens,
        reader_identities,
        "routers: MODELYARD_ROUTER_REGISTRY_TOKEN; workers: MODELYARD_WORKER_REGISTRY_TOKEN; "
        "CLI: --registry-token or MODELYARD_REGISTRY_TOKEN",
        "a reader token",
    )
    writer = Role.of(
        "an outcome writer",
        outcome_writer_tokens,
        outcome_writer_identities,
        "routers: MODELYARD_ROUTER_OUTCOME_TOKEN",
        "an outcome-writer token",
    )
    # Rules are tried in order: the write methods first, then the rest of the services.
    return AccessGate(
        [
            Rule(WRITE_METHODS, admin),
            Rule(OUTCOME_WRITE_METHODS, writer, (admin,)),
            Rule(
                (service_prefix(SERVICE_NAME), service_prefix(OUTCOME_SERVICE_NAME)),
                reader,
                (admin,),
            ),
        ]
    )
