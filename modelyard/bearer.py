"""Bearer secrets in call metadata: reading them (servers) and sending them (clients)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

AUTHORIZATION = "authorization"
_BEARER = "bearer "

Metadata = Iterable[tuple[str, str | bytes]]


def metadata_value(metadata: Metadata | None, name: str) -> str | None:
    """The first value of `name` (lower case) in call metadata, or None."""
    for key, value in metadata or ():
        if key.lower() == name:
            return value.decode(errors="replace") if isinstance(value, bytes) else value
    return None


def bearer_token(metadata: Metadata | None) -> str | None:
    """The token of an `authorization: Bearer <token>` entry, or None."""
    for key, value in metadata or ():
        if key.lower() != AUTHORIZATION:
            continue
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        if text[: len(_BEARER)].lower() == _BEARER and text[len(_BEARER) :].strip():
            return text[len(_BEARER) :].strip()
    return None


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
