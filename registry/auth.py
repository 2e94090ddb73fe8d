"""The admin token: writes carry `authorization: Bearer <token>` when one is configured."""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from modelyard.errors import PermissionDenied, Unauthenticated

AUTHORIZATION = "authorization"
BEARER = "bearer "


class AdminToken:
    """Checks a call's metadata; an empty configured token lets every call through."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    @property
    def enabled(self) -> bool:
        return bool(self._token)

    def check(self, metadata: Iterable[tuple[str, str | bytes]] | None, action: str) -> None:
        """UNAUTHENTICATED without a bearer token, PERMISSION_DENIED with a wrong one."""
        if not self._token:
            return
        sent = _bearer(metadata or ())
        if sent is None:
            raise Unauthenticated(
                f"{action} changes the catalogue and needs the admin token: send metadata "
                "'authorization: Bearer <token>' (CLI: --admin-token or MODELYARD_ADMIN_TOKEN)",
                reason="ADMIN_TOKEN_MISSING",
            )
        # Constant time: the comparison must not tell how much of a guess was right.
        if not hmac.compare_digest(sent, self._token):
            raise PermissionDenied(
                f"{action}: the admin token is not valid", reason="ADMIN_TOKEN_INVALID"
            )


def _bearer(metadata: Iterable[tuple[str, str | bytes]]) -> bytes | None:
    for key, value in metadata:
        if key.lower() != AUTHORIZATION:
            continue
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        if text[: len(BEARER)].lower() == BEARER and text[len(BEARER) :].strip():
            return text[len(BEARER) :].strip().encode()
    return None


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying `token` (nothing when it is empty), for clients."""
    return ((AUTHORIZATION, f"Bearer {token}"),) if token else ()
