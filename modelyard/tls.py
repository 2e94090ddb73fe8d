"""TLS/mTLS settings of one service: its server port and its outgoing channels.

Off by default: without a certificate a service listens in plaintext, as in the local mesh.
`TlsSettings` is a plain model that each service's root settings nests as `tls`, so
`MODELYARD_<SERVICE>_TLS_CERT_FILE` and friends fill it (see `modelyard.settings`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from pydantic import BaseModel, Field


class TlsSettings(BaseModel):
    """One service's certificates (environment: MODELYARD_<SERVICE>_TLS_*)."""

    cert_file: str = Field(
        default="",
        description="PEM certificate (chain) this service presents; empty: plaintext.",
    )
    key_file: str = Field(default="", description="PEM private key of cert_file.")
    ca_file: str = Field(
        default="",
        description=(
            "PEM CA bundle: verifies the servers this service calls and, with mtls, the "
            "clients calling it. Empty: the system roots (servers only)."
        ),
    )
    mtls: bool = Field(
        default=False,
        description=(
            "Require client certificates signed by ca_file (the *_IDENTITIES settings then "
            "say which certificates may call what). Outgoing channels always present "
            "cert_file/key_file when set."
        ),
    )
    server_name: str = Field(
        default="",
        description=(
            "Name to verify in the servers' certificates instead of the dialled host "
            "(e.g. a DNS name shared by all workers when they are reached by pod IP)."
        ),
    )

    @property
    def enabled(self) -> bool:
        """Whether this service serves TLS (a certificate is configured)."""
        return bool(self.cert_file)

    @property
    def client_enabled(self) -> bool:
        """Whether this service's outgoing channels use TLS (a certificate or a CA is set)."""
        return bool(self.cert_file or self.ca_file)

    def check_server(self) -> None:
        """Fail closed: raise ValueError for any setting a server cannot honour, rather than
        serve plaintext (or TLS without client checks) when the operator asked for more."""
        if not self.enabled:
            asked = [f for f in ("key_file", "ca_file", "mtls") if getattr(self, f)]
            if asked:
                raise ValueError(
                    f"TLS: {', '.join(asked)} set but no cert_file: this service would serve "
                    "plaintext; set cert_file and key_file, or clear the TLS settings"
                )
            return
        if not self.key_file:
            raise ValueError("TLS: cert_file is set but key_file is not")
        if self.mtls and not self.ca_file:
            raise ValueError("TLS: mtls needs ca_file to verify client certificates")
        for name in ("cert_file", "key_file", "ca_file"):
            path = getattr(self, name)
            if path and not os.access(path, os.R_OK):
                raise ValueError(f"TLS: {name} {path} is not a readable file")

    def server_credentials(self) -> grpc.ServerCredentials:
        self.check_server()
        if not self.enabled:
            raise ValueError("TLS is off: no cert_file configured")
        return grpc.ssl_server_credentials(
            [(_read(self.key_file), _read(self.cert_file))],
            root_certificates=_read(self.ca_file) if self.mtls else None,
            require_client_auth=self.mtls,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Client credentials: the CA (or system roots) and this service's own certificate
        when it has one, so servers that check identities (mTLS) can tell who calls."""
        own = self.cert_file and self.key_file
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file) if self.ca_file else None,
            private_key=_read(self.key_file) if own else None,
            certificate_chain=_read(self.cert_file) if own else None,
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        if self.client_enabled and self.server_name:
            return [("grpc.ssl_target_name_override", self.server_name)]
        return []


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def secure_or_insecure_channel(
    address: str,
    tls: TlsSettings | None,
    interceptors: Sequence[Any] | None = None,
    options: Sequence[tuple[str, Any]] | None = None,
) -> grpc.aio.Channel:
    """A grpc.aio channel to `address`: TLS when `tls` has a certificate or CA, else plaintext."""
    opts = list(options or [])
    if tls is None or not tls.client_enabled:
        return grpc.aio.insecure_channel(address, options=opts, interceptors=interceptors)
    names = {name for name, _ in opts}
    opts += [o for o in tls.channel_options() if o[0] not in names]
    return grpc.aio.secure_channel(
        address, tls.channel_credentials(), options=opts, interceptors=interceptors
    )


def tls_from_env(service: str, environ: Mapping[str, str] | None = None) -> TlsSettings:
    """`service`'s TLS settings (MODELYARD_<SERVICE>_TLS_*) from `environ` (default: this
    process's), for code that talks to a service it does not run, as the local mesh does."""
    env = os.environ if environ is None else environ
    prefix = f"MODELYARD_{service.upper()}_TLS_"
    values = {
        f: env[prefix + f.upper()] for f in TlsSettings.model_fields if prefix + f.upper() in env
    }
    return TlsSettings.model_validate(values)
