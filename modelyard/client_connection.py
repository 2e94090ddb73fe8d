"""How the SDK reaches a service (the router, the registry): address, TLS and token from
arguments or the environment (the CLI's variables), and the channel's retry policy.

Retries are gRPC's own (a service-config retry policy), so they follow its rule: a call
is retried only before the server has sent anything back, which for a stream means
before its first event. A retried generation can never repeat text. The server's hint
comes as `grpc-retry-pushback-ms` (modelyard.errors.abort sets it from RetryInfo), which
gRPC honours in place of its own backoff.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class Service:
    """A service the SDK dials: its proto name (the retry policy applies to its methods)
    and the CLI's variables naming its address and its bearer token (first set wins)."""

    name: str
    address_variable: str
    default_address: str
    token_variables: tuple[str, ...]


ROUTER = Service(
    "modelyard.v1.RouterService", "MODELYARD_ROUTER", "127.0.0.1:50050", ("MODELYARD_API_KEY",)
)
# The registry's token is its admin's (writes); `modelyard.registry_client` adds the reader's.
REGISTRY = Service(
    "modelyard.v1.RegistryService",
    "MODELYARD_REGISTRY",
    "127.0.0.1:50051",
    ("MODELYARD_ADMIN_TOKEN", "MODELYARD_REGISTRY_ADMIN_TOKEN"),
)
DEFAULT_ADDRESS = ROUTER.default_address

# Four attempts in all, 0.25 s then 0.5 s then 1 s apart (jittered by gRPC), on the two
# codes the services use for "not now, maybe elsewhere or later".
RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.25s",
    "maxBackoff": "4s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
}


def service_config(retries: bool, service: str = ROUTER.name) -> str:
    method: dict[str, object] = {"name": [{"service": service}]}
    if retries:
        method["retryPolicy"] = RETRY_POLICY
    return json.dumps({"methodConfig": [method]})


@dataclass(frozen=True)
class Connection:
    """Where and how to dial; unset arguments come from the service's variables
    (the router's: MODELYARD_ROUTER, MODELYARD_API_KEY) and MODELYARD_TLS_{CA,CERT,KEY}_FILE /
    MODELYARD_TLS_SERVER_NAME. `api_key` is the service's bearer token: the router's client
    key, or the registry's admin token (its reads may send a reader token instead)."""

    address: str
    api_key: str = ""
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_server_name: str = ""
    retries: bool = True
    service: Service = ROUTER

    @classmethod
    def resolve(
        cls,
        address: str | None = None,
        *,
        api_key: str | None = None,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        tls_server_name: str | None = None,
        retries: bool = True,
        service: Service = ROUTER,
    ) -> Connection:
        def pick(given: str | None, variable: str, default: str = "") -> str:
            return given if given is not None else os.environ.get(variable, default)

        token = next(filter(None, map(os.environ.get, service.token_variables)), "")
        return cls(
            address=pick(address, service.address_variable, service.default_address),
            api_key=token if api_key is None else api_key,
            tls_ca_file=pick(tls_ca_file, "MODELYARD_TLS_CA_FILE"),
            tls_cert_file=pick(tls_cert_file, "MODELYARD_TLS_CERT_FILE"),
            tls_key_file=pick(tls_key_file, "MODELYARD_TLS_KEY_FILE"),
            tls_server_name=pick(tls_server_name, "MODELYARD_TLS_SERVER_NAME"),
            retries=retries,
            service=service,
        )

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials when a CA (or a client certificate, for mTLS) is given."""
        if not (self.tls_ca_file or self.tls_cert_file):
            return None

        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.tls_ca_file),
            private_key=read(self.tls_key_file) if self.tls_cert_file else None,
            certificate_chain=read(self.tls_cert_file),
        )

    def options(self) -> list[tuple[str, str | int]]:
        options: list[tuple[str, str | int]] = [
            ("grpc.service_config", service_config(self.retries, self.service.name)),
            ("grpc.enable_retries", 1 if self.retries else 0),
        ]
        if self.tls_server_name:
            # The name to verify in the service's certificate instead of the dialled host.
            options.append(("grpc.ssl_target_name_override", self.tls_server_name))
        return options

    def channel(self) -> grpc.Channel:
        credentials = self.credentials()
        if credentials is None:
            return grpc.insecure_channel(self.address, options=self.options())
        return grpc.secure_channel(self.address, credentials, options=self.options())

    def aio_channel(self) -> grpc.aio.Channel:
        credentials = self.credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(self.address, options=self.options())
        return grpc.aio.secure_channel(self.address, credentials, options=self.options())
