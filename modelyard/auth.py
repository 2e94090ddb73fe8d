"""Bearer secrets on RPCs: one server interceptor every service configures, and the client side.

A service lists its `Guard`s (which methods need which secrets) and installs one
`BearerGate`; the gate answers before the handler runs, so no guarded method reads a body
from an unauthenticated caller. A guard without secrets is off (the local default).
Health and reflection are never guarded: no guard names them.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from modelyard.errors import ModelyardError, PermissionDenied, Unauthenticated, abort

AUTHORIZATION = "authorization"
_BEARER = "bearer "

Metadata = Iterable[tuple[str, str | bytes]]


@dataclass(frozen=True)
class Guard:
    """Methods (exact names, or prefixes ending in '/') that need one of `secrets`."""

    methods: tuple[str, ...]
    secrets: tuple[str, ...]
    what: str  # "the admin token", "an API key": for error messages
    hint: str  # how a client sends it

    def covers(self, method: str) -> bool:
        return any(method.startswith(m) if m.endswith("/") else method == m for m in self.methods)


def service_prefix(full_service_name: str) -> str:
    """The method prefix of a whole service, e.g. "/modelyard.v1.WorkerService/"."""
    return f"/{full_service_name}/"


def method_name(full_service_name: str, method: str) -> str:
    return f"/{full_service_name}/{method}"


def bearer_token(metadata: Metadata | None) -> str | None:
    """The token of an `authorization: Bearer <token>` entry, or None."""
    for key, value in metadata or ():
        if key.lower() != AUTHORIZATION:
            continue
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        if text[: len(_BEARER)].lower() == _BEARER and text[len(_BEARER) :].strip():
            return text[len(_BEARER) :].strip()
    return None


def check_bearer(sent: str | None, guard: Guard, action: str) -> ModelyardError | None:
    """None when `sent` is one of the guard's secrets, else the error to answer with."""
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

    def error_for(self, method: str, metadata: Metadata | None) -> ModelyardError | None:
        """The refusal for a call of `method` with `metadata`, or None to let it through."""
        guard = next((g for g in self._guards if g.covers(method)), None)
        if guard is None:
            return None
        return check_bearer(bearer_token(metadata), guard, method.rpartition("/")[2] or method)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        error = self.error_for(
            handler_call_details.method, handler_call_details.invocation_metadata
        )
        return handler if error is None else _refusing(handler, error)


def _refusing(handler: grpc.RpcMethodHandler, error: ModelyardError) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that ends every call with `error`.

    It never deserializes the request: the refusal costs nothing however big the body is.
    """

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort(context, error)

    async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort(context, error)
        yield  # pragma: no cover - makes this an async generator

    def skip(data: bytes) -> bytes:
        return data

    ser = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, skip, ser)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming, skip, ser)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary, skip, ser)
    return grpc.stream_stream_rpc_method_handler(streaming, skip, ser)


# -- client side ---------------------------------------------------------------------------


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
