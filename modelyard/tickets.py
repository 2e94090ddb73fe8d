"""Router-signed tickets: a client may call a worker directly with one.

A ticket says "the router admitted request R for model M until T". Routers sign with an
Ed25519 private key (only routers hold it); workers verify with the public keys they are
given, so a worker cannot mint tickets and a leaked worker config grants nothing. A ticket
is short-lived, bound to one request id and model, and single-use (workers remember the
nonces of unexpired tickets, in bounded memory). Each ticket names its key id, and
workers accept every configured key: rotate by adding the new public key to workers,
then switching routers to the new private key, then removing the old public key.

Wire form: base64url(JSON claims) "." base64url(signature over the first part), sent as
call metadata `x-modelyard-ticket`. Claims beyond the six a verifier needs (`Grant`: the
route, arm, attempt, API key, output bound and issuing router of a direct stream) are
optional: verifiers ignore claims they do not know, so old workers accept new tickets.
"""

from __future__ import annotations

import base64
import json
import math
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from modelyard.errors import ModelyardError, PermissionDenied, Unavailable

TICKET_METADATA = "x-modelyard-ticket"
MAX_TICKET_CHARS = 2048  # claims are a few short strings: anything longer is not ours
DEFAULT_TTL_S = 30.0
MAX_TTL_S = 300.0  # a verifier refuses tickets that claim to live longer than this
DEFAULT_MAX_OUTSTANDING = 100_000  # remembered nonces; bounded memory under any load


@dataclass(frozen=True)
class Grant:
    """What the router decided for a direct stream, carried in its ticket."""

    route: str = ""
    arm: str = ""
    attempt: int = 0
    client: str = ""  # the API key's name (per-key accounting), "" when none
    max_tokens: int = 0  # the most output tokens the ticket admits; 0: no bound
    router: str = ""  # the issuing router's id: where the worker reports the outcome


# Wire names of Grant's fields (short: a ticket travels in every direct call's metadata).
_GRANT_CLAIMS = {
    "route": "route",
    "arm": "arm",
    "attempt": "att",
    "client": "key",
    "max_tokens": "maxt",
    "router": "rtr",
}


@dataclass(frozen=True)
class Claims:
    key_id: str
    request_id: str
    model: str  # "name@version"
    expires_at: float  # unix seconds
    issued_at: float
    nonce: str
    grant: Grant = Grant()
    raw: str = field(default="", repr=False, compare=False)  # the ticket, as proof onwards


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def unverified_nonce(ticket: str) -> str | None:
    """The nonce a ticket claims, its signature unchecked (None if it does not parse).

    Only to find what a ticket may be: a caller that holds the ticket it issued under
    this nonce can compare the two in constant time instead of checking a signature."""
    if len(ticket) > MAX_TICKET_CHARS or ticket.count(".") != 1:
        return None
    try:
        nonce = json.loads(_unb64(ticket.partition(".")[0])).get("nonce")
    except (ValueError, AttributeError, RecursionError):  # bad base64 or JSON, not an object
        return None
    return nonce if isinstance(nonce, str) else None


class TicketSigner:
    """Issues tickets (routers)."""

    def __init__(
        self,
        key: Ed25519PrivateKey,
        key_id: str,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < ttl_s <= MAX_TTL_S:
            raise ValueError(f"ticket ttl must be in (0, {MAX_TTL_S:g}] seconds")
        self._key = key
        self.key_id = key_id
        self.ttl_s = ttl_s
        self._clock = clock
        self._own = TicketVerifier({key_id: key.public_key()}, clock=clock)

    @classmethod
    def from_pem_file(cls, path: str, key_id: str, *, ttl_s: float = DEFAULT_TTL_S) -> TicketSigner:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: the ticket key must be an Ed25519 private key")
        return cls(key, key_id, ttl_s=ttl_s)

    @classmethod
    def from_setting(cls, entry: str, *, ttl_s: float = DEFAULT_TTL_S) -> TicketSigner:
        """From a "key_id:/path/private.pem" entry (MODELYARD_ROUTER_TICKET_KEY)."""
        key_id, sep, path = entry.partition(":")
        if not sep or not key_id or not path:
            raise ValueError(f"ticket key {entry!r} is not 'key_id:/path/private.pem'")
        return cls.from_pem_file(path, key_id, ttl_s=ttl_s)

    def issue(self, request_id: str, model: str, grant: Grant | None = None) -> str:
        return self.mint(request_id, model, grant).raw

    def mint(self, request_id: str, model: str, grant: Grant | None = None) -> Claims:
        """A new ticket's claims; the ticket itself is their `raw`."""
        now = self._clock()
        extra = asdict(grant) if grant is not None else {}
        claims: dict[str, object] = {
            _GRANT_CLAIMS[k]: v for k, v in extra.items() if v not in ("", 0)
        }
        issued, expires = round(now, 3), round(now + self.ttl_s, 3)
        nonce = secrets.token_urlsafe(12)
        claims |= {
            "kid": self.key_id,
            "rid": request_id,
            "model": model,
            "iat": issued,
            "exp": expires,
            "nonce": nonce,
        }
        body = _b64(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
        ticket = f"{body}.{_b64(self._key.sign(body.encode()))}"
        return Claims(
            self.key_id, request_id, model, expires, issued, nonce, grant or Grant(), ticket
        )

    def read(self, ticket: str) -> Claims:
        """The claims of a ticket this signer issued (its signature checked), expired or
        not: how long a ticket's outcome may still be reported is the router's to judge."""
        return self._own.read(ticket)


class TicketVerifier:
    """Checks and redeems tickets (workers)."""

    def __init__(
        self,
        keys: Mapping[str, Ed25519PublicKey],
        *,
        clock: Callable[[], float] = time.time,
        max_outstanding: int = DEFAULT_MAX_OUTSTANDING,
    ) -> None:
        self._keys = dict(keys)
        self._clock = clock
        self._max = max_outstanding
        self._redeemed: OrderedDict[str, float] = OrderedDict()  # nonce -> expires_at

    @classmethod
    def from_files(
        cls,
        entries: Iterable[str],
        *,
        clock: Callable[[], float] = time.time,
        max_outstanding: int = DEFAULT_MAX_OUTSTANDING,
    ) -> TicketVerifier:
        """From "key_id:path/to/public.pem" entries."""
        keys: dict[str, Ed25519PublicKey] = {}
        for entry in entries:
            key_id, sep, path = entry.partition(":")
            if not sep or not key_id or not path:
                raise ValueError(f"ticket key {entry!r} is not 'key_id:path/to/public.pem'")
            key = serialization.load_pem_public_key(Path(path).read_bytes())
            if not isinstance(key, Ed25519PublicKey):
                raise ValueError(f"{path}: a ticket key must be an Ed25519 public key")
            keys[key_id] = key
        return cls(keys, clock=clock, max_outstanding=max_outstanding)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def verify(self, ticket: str) -> Claims:
        """The claims of a well-formed, correctly signed, unexpired ticket; else raises.

        Costs one signature check and no state: safe before the request body is read."""
        claims = self.read(ticket)
        now = self._clock()
        if not (math.isfinite(claims.expires_at) and math.isfinite(claims.issued_at)):
            raise _refused("the ticket's times are not numbers", "TICKET_INVALID")
        if claims.expires_at <= now:
            raise _refused("the ticket has expired; ask the router for a new one", "TICKET_EXPIRED")
        if claims.expires_at - claims.issued_at > MAX_TTL_S or claims.issued_at > now + 60:
            raise _refused("the ticket's lifetime is not acceptable", "TICKET_INVALID")
        return claims

    def redeem(self, claims: Claims, request_id: str, model: str) -> None:
        """Accept `claims` for this request once: bound to its request id and model."""
        if (claims.request_id, claims.model) != (request_id, model):
            raise _refused(
                f"the ticket is for request {claims.request_id!r} on {claims.model!r}, "
                f"not {request_id!r} on {model!r}",
                "TICKET_MISMATCH",
            )
        now = self._clock()
        while self._redeemed and next(iter(self._redeemed.values())) <= now:
            self._redeemed.popitem(last=False)  # tickets expire in issue order, roughly
        if claims.nonce in self._redeemed:
            raise _refused("the ticket was already used", "TICKET_REUSED")
        if len(self._redeemed) >= self._max:
            raise Unavailable(
                "too many unexpired tickets outstanding on this worker; retry through the router",
                reason="TICKETS_EXHAUSTED",
            )
        self._redeemed[claims.nonce] = claims.expires_at

    def read(self, ticket: str) -> Claims:
        """The claims of a well-formed ticket signed by a trusted key; times unchecked."""
        if len(ticket) > MAX_TICKET_CHARS or ticket.count(".") != 1:
            raise _refused("the ticket is malformed", "TICKET_INVALID")
        body, signature = ticket.split(".")
        try:
            fields = json.loads(_unb64(body))
            key = self._keys.get(str(fields["kid"]))
            if key is None:
                raise _refused("the ticket's signing key is not trusted here", "TICKET_KEY_UNKNOWN")
            key.verify(_unb64(signature), body.encode())
            return Claims(
                key_id=str(fields["kid"]),
                request_id=str(fields["rid"]),
                model=str(fields["model"]),
                expires_at=float(fields["exp"]),
                issued_at=float(fields["iat"]),
                nonce=str(fields["nonce"]),
                grant=_grant_of(fields),
                raw=ticket,
            )
        except ModelyardError:
            raise
        except (InvalidSignature, ValueError, KeyError, TypeError, RecursionError) as err:
            raise _refused(
                "the ticket is malformed or its signature is wrong", "TICKET_INVALID"
            ) from err


def _grant_of(fields: Mapping[str, object]) -> Grant:
    def text(name: str) -> str:
        return str(fields.get(_GRANT_CLAIMS[name], ""))

    def number(name: str) -> int:
        value = fields.get(_GRANT_CLAIMS[name], 0)
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"claim {name} is not a count")
        return value

    return Grant(
        route=text("route"),
        arm=text("arm"),
        attempt=number("attempt"),
        client=text("client"),
        max_tokens=number("max_tokens"),
        router=text("router"),
    )


def _refused(message: str, reason: str) -> PermissionDenied:
    return PermissionDenied(message, reason=reason)


def write_key_pair(private: Path, public: Path) -> None:
    """A fresh Ed25519 ticket key: the private key (PKCS8 PEM) and its public key (PEM),
    both readable by their owner only (0600), replacing what was there."""
    key = Ed25519PrivateKey.generate()
    pems = {
        private: key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        public: key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    for path, pem in pems.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o600)  # a file that existed keeps its mode otherwise
            out.write(pem)
