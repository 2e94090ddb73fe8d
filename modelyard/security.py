"""TLS/mTLS between services and bearer secrets (API keys, admin tokens) on RPCs.

Everything here is off by default: without a certificate a service listens in plaintext
and without a configured key or token every call is let through, as in the local mesh.

- `TlsSettings.for_service("worker")` reads `MODELYARD_WORKER_TLS_{CERT_FILE,KEY_FILE,
  CA_FILE,MTLS,SERVER_NAME}`: the server side (`server_credentials`) and the client side of
  the service's outgoing channels (`channel_credentials`, `secure_or_insecure_channel`).
- `BearerGate` is a server interceptor asking for `authorization: Bearer <secret>` on the
  methods it guards: UNAUTHENTICATED without one, PERMISSION_DENIED with a wrong one.
  `worker_gate()` and `router_gate()` build the services' gates from their environment;
  health and reflection are never guarded.
- `bearer_interceptors` is the client side: channel interceptors adding the header to every
  call.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import grpc
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelyard.errors import ModelyardError, PermissionDenied, Unauthenticated, abort

AUTHORIZATION = "authorization"
_BEARER = "bearer "

ROUTER_SERVICE = "/modelyard.v1.RouterService/"
WORKER_SERVICE = "/modelyard.v1.WorkerService/"
WORKER_ADMIN_METHODS = (f"{WORKER_SERVICE}LoadModel", f"{WORKER_SERVICE}UnloadModel")


# -- TLS -------------------------------------------------------------------------------


class TlsSettings(BaseSettings):
    """One service's certificates; build with `for_service` (prefix MODELYARD_<SERVICE>_TLS_)."""

    model_config = SettingsConfigDict(env_prefix="MODELYARD_TLS_", extra="ignore")

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
            "Require client certificates signed by ca_file, and present cert_file/key_file "
            "on outgoing channels."
        ),
    )
    server_name: str = Field(
        default="",
        description=(
            "Name to verify in the servers' certificates instead of the dialled host "
            "(e.g. a DNS name shared by all workers when they are reached by pod IP)."
        ),
    )

    @classmethod
    def for_service(cls, service: str, environ: Mapping[str, str] | None = None) -> Self:
        """The settings of `service` ("registry", "router", "worker") from the environment,
        or from `environ` instead when given (as for a child process's environment)."""
        prefix = f"MODELYARD_{service.upper()}_TLS_"
        if environ is None:
            return cls(_env_prefix=prefix)  # type: ignore[call-arg]
        fields = ("cert_file", "key_file", "ca_file", "mtls", "server_name")
        values = {f: environ[prefix + f.upper()] for f in fields if prefix + f.upper() in environ}
        return cls.model_validate(values)

    @property
    def enabled(self) -> bool:
        """Whether this service serves TLS (a certificate is configured)."""
        return bool(self.cert_file)

    @property
    def client_enabled(self) -> bool:
        """Whether this service's outgoing channels use TLS (a certificate or a CA is set)."""
        return bool(self.cert_file or self.ca_file)

    def server_credentials(self) -> grpc.ServerCredentials:
        if not self.enabled:
            raise ValueError("TLS is off: no cert_file configured")
        if not self.key_file:
            raise ValueError("TLS needs key_file with cert_file")
        if self.mtls and not self.ca_file:
            raise ValueError("mTLS needs ca_file to verify client certificates")
        return grpc.ssl_server_credentials(
            [(_read(self.key_file), _read(self.cert_file))],
            root_certificates=_read(self.ca_file) if self.mtls else None,
            require_client_auth=self.mtls,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Client credentials: the CA (or system roots) and, for mTLS, this service's cert."""
        own = self.mtls and self.cert_file and self.key_file
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


# -- Bearer secrets: server side ----------------------------------------------------------


@dataclass(frozen=True)
class Guard:
    """Methods (exact names, or prefixes ending in '/') that need one of `secrets`."""

    methods: tuple[str, ...]
    secrets: tuple[str, ...]
    what: str  # "the admin token", "an API key": for error messages
    hint: str  # how a client sends it

    def covers(self, method: str) -> bool:
        return any(method.startswith(m) if m.endswith("/") else method == m for m in self.methods)


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an `authorization: Bearer <token>` entry, or None."""
    for key, value in metadata or ():
        if key.lower() != AUTHORIZATION:
            continue
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        if text[: len(_BEARER)].lower() == _BEARER and text[len(_BEARER) :].strip():
            return text[len(_BEARER) :].strip()
    return None


def check_bearer(
    metadata: Iterable[tuple[str, str | bytes]] | None, guard: Guard, method: str
) -> ModelyardError | None:
    """None when the call may go on, else the error to answer with."""
    sent = bearer_token(metadata)
    action = method.rpartition("/")[2] or method
    if sent is None:
        return Unauthenticated(
            f"{action} needs {guard.what}: send metadata 'authorization: Bearer <secret>' "
            f"({guard.hint})",
            reason="CREDENTIALS_MISSING",
        )
    # Constant time, and every secret compared, so timing tells nothing about a guess.
    ok = False
    for secret in guard.secrets:
        ok |= hmac.compare_digest(sent.encode(), secret.encode())
    if not ok:
        return PermissionDenied(
            f"{action}: {guard.what} is not valid", reason="CREDENTIALS_INVALID"
        )
    return None


class BearerGate(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls to guarded methods that lack the right bearer secret.

    The first guard covering a method applies; methods no guard covers pass.
    """

    def __init__(self, guards: Sequence[Guard]) -> None:
        self._guards = [g for g in guards if g.secrets]

    @property
    def enabled(self) -> bool:
        return bool(self._guards)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        guard = next((g for g in self._guards if g.covers(method)), None)
        handler = await continuation(handler_call_details)
        if guard is None or handler is None:
            return handler
        error = check_bearer(handler_call_details.invocation_metadata, guard, method)
        if error is None:
            return handler
        return _refusing(handler, error)


def _refusing(handler: grpc.RpcMethodHandler, error: ModelyardError) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that ends every call with `error`."""

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort(context, error)

    async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort(context, error)
        yield  # pragma: no cover - makes this an async generator

    des, ser = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, des, ser)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming, des, ser)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary, des, ser)
    return grpc.stream_stream_rpc_method_handler(streaming, des, ser)


class WorkerAuthSettings(BaseSettings):
    """MODELYARD_WORKER_ADMIN_TOKEN and MODELYARD_WORKER_API_KEY (environment only)."""

    model_config = SettingsConfigDict(env_prefix="MODELYARD_WORKER_", extra="ignore")

    admin_token: str = Field(default="", description="Needed by LoadModel and UnloadModel.")
    api_key: str = Field(
        default="", description="Needed by Generate, GetStatus and WatchStatus (the router's)."
    )


class RouterAuthSettings(BaseSettings):
    """MODELYARD_ROUTER_API_KEYS and MODELYARD_ROUTER_WORKER_API_KEY (environment only)."""

    model_config = SettingsConfigDict(env_prefix="MODELYARD_ROUTER_", extra="ignore")

    api_keys: str = Field(default="", description="Comma-separated client API keys.")
    worker_api_key: str = Field(
        default="", description="Sent to workers (their MODELYARD_WORKER_API_KEY)."
    )

    def keys(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.api_keys.split(",") if k.strip())


def worker_gate(settings: WorkerAuthSettings | None = None) -> BearerGate:
    s = settings if settings is not None else WorkerAuthSettings()
    return BearerGate(
        [
            Guard(
                WORKER_ADMIN_METHODS,
                (s.admin_token,) if s.admin_token else (),
                "the worker's admin token",
                "the value of the worker's MODELYARD_WORKER_ADMIN_TOKEN",
            ),
            Guard(
                (WORKER_SERVICE,),
                (s.api_key,) if s.api_key else (),
                "the worker's API key",
                "routers: MODELYARD_ROUTER_WORKER_API_KEY",
            ),
        ]
    )


def router_gate(settings: RouterAuthSettings | None = None) -> BearerGate:
    s = settings if settings is not None else RouterAuthSettings()
    return BearerGate(
        [
            Guard(
                (ROUTER_SERVICE,),
                s.keys(),
                "an API key",
                "SDK: Client(api_key=...); CLI: --api-key or MODELYARD_API_KEY",
            )
        ]
    )


# -- Bearer secrets: client side ----------------------------------------------------------


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying `token` (nothing when it is empty)."""
    return ((AUTHORIZATION, f"Bearer {token}"),) if token else ()


class _BearerDetails:
    def __init__(self, token: str) -> None:
        self._entry = (AUTHORIZATION, f"Bearer {token}")

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add(*self._entry)
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
        )


class _UnaryUnaryBearer(_BearerDetails, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _UnaryStreamBearer(_BearerDetails, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


def bearer_interceptors(token: str) -> list[Any]:
    """Channel interceptors adding `authorization: Bearer <token>` to every unary and
    server-streaming call (grpc.aio files an interceptor under one kind only: one each)."""
    return [_UnaryUnaryBearer(token), _UnaryStreamBearer(token)] if token else []
