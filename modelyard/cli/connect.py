"""How every CLI command reaches a service: TLS/mTLS options and the channel they make.

Every command that dials a router, registry or worker takes the same options,
`--tls-ca`, `--tls-cert`, `--tls-key` and `--tls-server-name` (or MODELYARD_TLS_CA_FILE,
MODELYARD_TLS_CERT_FILE, MODELYARD_TLS_KEY_FILE, MODELYARD_TLS_SERVER_NAME), turned here
into the client side of `modelyard.tls.TlsSettings`: the CA that verifies the service
and, for mTLS, this caller's own certificate, whose identity the service checks against
its role lists (docs/security.md). Without any of them the channel is plaintext, as the
local mesh expects. The bearer tokens (`--api-key`, `--admin-token`, `--registry-token`,
`--operator-token`) travel as `authorization: Bearer` metadata on each call.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import grpc
import typer

from modelyard.client import Client
from modelyard.tls import TlsSettings

PANEL = "Security"
R = TypeVar("R")

TlsCaOpt = Annotated[
    str,
    typer.Option(
        "--tls-ca",
        envvar="MODELYARD_TLS_CA_FILE",
        help="PEM CA bundle verifying the service's certificate; turns TLS on.",
        show_default=False,
        rich_help_panel=PANEL,
    ),
]
TlsCertOpt = Annotated[
    str,
    typer.Option(
        "--tls-cert",
        envvar="MODELYARD_TLS_CERT_FILE",
        help="PEM client certificate (mTLS): its identity is checked against the role "
        "the call needs. Turns TLS on (system roots without --tls-ca).",
        show_default=False,
        rich_help_panel=PANEL,
    ),
]
TlsKeyOpt = Annotated[
    str,
    typer.Option(
        "--tls-key",
        envvar="MODELYARD_TLS_KEY_FILE",
        help="PEM private key of --tls-cert.",
        show_default=False,
        rich_help_panel=PANEL,
    ),
]
TlsServerNameOpt = Annotated[
    str,
    typer.Option(
        "--tls-server-name",
        envvar="MODELYARD_TLS_SERVER_NAME",
        help="Name to verify in the service's certificate instead of the dialled host.",
        show_default=False,
        rich_help_panel=PANEL,
    ),
]
ApiKeyOpt = Annotated[
    str,
    typer.Option(
        "--api-key",
        envvar="MODELYARD_API_KEY",
        help="Router API key (sent as a bearer token).",
        show_default=False,
        rich_help_panel=PANEL,
    ),
]
AdminTokenOpt = Annotated[
    str,
    typer.Option(
        "--admin-token",
        # The registry's own variable too, so a shell set up for the server can run the CLI.
        envvar=["MODELYARD_ADMIN_TOKEN", "MODELYARD_REGISTRY_ADMIN_TOKEN"],
        help="The registry's admin token: needed for writes when it has one; reads with it "
        "too when no --registry-token is given.",
        show_default=False,
        rich_help_panel=PANEL,
    ),
]
RegistryTokenOpt = Annotated[
    str,
    typer.Option(
        "--registry-token",
        envvar="MODELYARD_REGISTRY_TOKEN",
        help="A registry reader token (one of its MODELYARD_REGISTRY_READER_TOKENS), "
        "for reads when the registry has readers.",
        show_default=False,
        rich_help_panel=PANEL,
    ),
]
OperatorTokenOpt = Annotated[
    str,
    typer.Option(
        "--operator-token",
        envvar=["MODELYARD_OPERATOR_TOKEN", "MODELYARD_WORKER_ADMIN_TOKEN"],
        help="The worker operator's token (the worker's MODELYARD_WORKER_ADMIN_TOKEN), "
        "needed to load and unload when it has one.",
        show_default=False,
        rich_help_panel=PANEL,
    ),
]


def client_tls(ca: str = "", cert: str = "", key: str = "", server_name: str = "") -> TlsSettings:
    """The caller's side of TLS from the command's options; a usage error (exit 2) for a
    combination that would silently drop what was asked for (a certificate without its key
    would dial without a client certificate)."""
    if cert and not key:
        raise typer.BadParameter("needs --tls-key, the certificate's key", param_hint="--tls-cert")
    if key and not cert:
        raise typer.BadParameter("needs --tls-cert, the key's certificate", param_hint="--tls-key")
    if server_name and not (ca or cert):
        raise typer.BadParameter(
            "needs --tls-ca or --tls-cert (TLS is off)", param_hint=("--tls-server-name")
        )
    for flag, path in (("--tls-ca", ca), ("--tls-cert", cert), ("--tls-key", key)):
        if path and not os.access(path, os.R_OK):
            raise typer.BadParameter(f"{path} is not a readable file", param_hint=flag)
    return TlsSettings(ca_file=ca, cert_file=cert, key_file=key, server_name=server_name)


PLAINTEXT = TlsSettings()  # what a command's `tls` holds when no TLS option is given

_TLS_OPTIONS: dict[str, Any] = {
    "tls_ca": TlsCaOpt,
    "tls_cert": TlsCertOpt,
    "tls_key": TlsKeyOpt,
    "tls_server_name": TlsServerNameOpt,
}


def tls_options(command: Callable[..., R]) -> Callable[..., R]:
    """Give a command the four TLS options; it receives them checked, as `tls`.

    Typer reads a command's parameters from its signature, so the wrapper shows the
    command's own parameters without `tls`, followed by the four options (they stay
    after the subcommand: `modelyard models list --tls-ca ca.pem`).
    """
    signature = inspect.signature(command, eval_str=True)
    own = [p for name, p in signature.parameters.items() if name != "tls"]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default="", annotation=hint)
        for name, hint in _TLS_OPTIONS.items()
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        tls = client_tls(*(kwargs.pop(name) for name in _TLS_OPTIONS))
        return command(*args, tls=tls, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {
        **{p.name: p.annotation for p in own},
        **_TLS_OPTIONS,
        "return": signature.return_annotation,
    }
    return wrapper


def open_channel(address: str, tls: TlsSettings) -> grpc.Channel:
    """A blocking channel to `address`: TLS (presenting the client certificate when there
    is one) as soon as `tls` has a CA or a certificate, else plaintext. The blocking twin
    of `modelyard.tls.secure_or_insecure_channel`; use it as a context manager."""
    if not tls.client_enabled:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, tls.channel_credentials(), options=tls.channel_options())


def router_client(address: str, tls: TlsSettings, *, api_key: str, timeout_s: float) -> Client:
    """The SDK client on the same TLS settings (generate, chat)."""
    return Client(
        address,
        timeout_s=timeout_s,
        api_key=api_key,
        tls_ca_file=tls.ca_file,
        tls_cert_file=tls.cert_file,
        tls_key_file=tls.key_file,
        tls_server_name=tls.server_name,
    )
