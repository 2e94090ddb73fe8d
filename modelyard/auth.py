"""Who may call what: roles proven by bearer secrets and/or mTLS peer identities.

A service describes its callers as `Role`s (the registry admin, a router, a client...) and
its methods as `Rule`s (which role they are for, which other roles they also accept), then
installs one `AccessGate`. A role is proven by a bearer secret (`authorization: Bearer`),
by a certificate identity (a SAN value of the mTLS peer's certificate, e.g.
`spiffe://modelyard/router`), or by both when both are configured. A rule whose role has
neither is open: the local default. Health and reflection are never guarded.

The gate answers before the handler runs and before the body is parsed, so an
unauthenticated caller cannot make a service read anything; a proven caller is visible
to the handler as `current_caller()` (logs and usage name the key, never the secret).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from modelyard.bearer import Metadata, bearer_token, metadata_value
from modelyard.errors import (
    InvalidArgument,
    ModelyardError,
    PermissionDenied,
    Unauthenticated,
    abort,
)
from modelyard.tickets import TICKET_METADATA, Claims, TicketVerifier

# gRPC's auth context lists every subject alternative name of the peer's certificate here.
_SAN_PROPERTY = "x509_subject_alternative_name"


def named_keys(entries: Iterable[str]) -> dict[str, str]:
    """secret -> name from "name:secret" entries; a bare secret is named by a short digest of
    itself, so logs can tell keys apart without showing one."""
    keys: dict[str, str] = {}
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        name, sep, secret = entry.partition(":")
        if not sep or not name or not secret:
            name, secret = "key-" + hashlib.sha256(entry.encode()).hexdigest()[:8], entry
        keys[secret] = name.strip()
    return keys


@dataclass(frozen=True)
class Caller:
    """Who a call proved itself to be."""

    role: str
    key_name: str = ""  # the name of the bearer key it sent, "" when none was needed
    identity: str = ""  # the certificate identity it proved, "" when none was needed
    ticket: Claims | None = None  # a router-signed ticket it showed instead, to redeem


@dataclass(frozen=True)
class Role:
    """A kind of caller and the credentials that prove it."""

    name: str  # "the registry admin", "a router": for error messages
    keys: Mapping[str, str] = field(default_factory=dict)  # secret -> key name
    identities: frozenset[str] = frozenset()
    hint: str = ""  # how a caller sends the secret, e.g. "CLI: --admin-token"
    secret: str = "a bearer secret"  # what the secret is called: "the admin token"
    # Closed though it has no credentials: nobody proves it, so its methods are refused
    # rather than open (an operator role left unset on a router that has client keys).
    sealed: bool = False

    @classmethod
    def of(
        cls,
        name: str,
        secrets: Iterable[str] = (),
        identities: Iterable[str] = (),
        hint: str = "",
        secret: str = "a bearer secret",
    ) -> Role:
        keys = named_keys(secrets)
        return cls(name, keys, frozenset(i for i in identities if i), hint, secret)

    @property
    def configured(self) -> bool:
        return self.sealed or bool(self.keys or self.identities)

    def key_name(self, token: str | None) -> str | None:
        """The name of `token` if it is one of this role's secrets."""
        if token is None:
            return None
        # Constant time, every secret compared, so timing tells nothing about a guess.
        found: str | None = None
        for secret, name in self.keys.items():
            if hmac.compare_digest(token.encode(), secret.encode()):
                found = name
        return found

    def identity(self, peer: Sequence[str]) -> str | None:
        return next((p for p in peer if p in self.identities), None)

    def proves(self, token: str | None, peer: Sequence[str]) -> Caller | None:
        if not (self.keys or self.identities):
            return None
        key = self.key_name(token) if self.keys else ""
        ident = self.identity(peer) if self.identities else ""
        if key is None or ident is None:
            return None
        return Caller(self.name, key, ident)


@dataclass(frozen=True)
class TicketAdmission:
    """Router-signed tickets admit a caller too; `binding` says which (request id, model)
    a parsed request is for, so a ticket is redeemed only for the request it names;
    `limits` raises when the request asks for more than the ticket grants."""

    verifier: TicketVerifier
    binding: Callable[[Any], tuple[str, str]]
    limits: Callable[[Claims, Any], None] | None = None

    def admit(self, action: str, ticket: str) -> Caller | ModelyardError:
        try:
            claims = self.verifier.verify(ticket)
        except ModelyardError as err:
            return err
        return Caller(f"a ticket holder for {action}", f"ticket:{claims.key_id}", ticket=claims)

    def redeem(self, claims: Claims, request: Any) -> None:
        if self.limits is not None:
            self.limits(claims, request)
        self.verifier.redeem(claims, *self.binding(request))


@dataclass(frozen=True)
class Rule:
    """Methods (exact names, or prefixes ending in '/') reserved to `role`; `also` lists
    other roles that may call them too (the admin may read what readers read). When `role`
    has no credentials configured the methods are open."""

    methods: tuple[str, ...]
    role: Role
    also: tuple[Role, ...] = ()
    tickets: TicketAdmission | None = None

    def covers(self, method: str) -> bool:
        return any(method.startswith(m) if m.endswith("/") else method == m for m in self.methods)

    @property
    def enabled(self) -> bool:
        # Tickets alone guard too: a worker configured only to verify them is not open.
        return self.role.configured or self.tickets is not None

    def decide(
        self, action: str, token: str | None, peer: Sequence[str], ticket: str | None = None
    ) -> Caller | ModelyardError:
        """The caller `token`, `peer` (or a ticket) prove, or the error to answer with."""
        roles = [self.role, *(r for r in self.also if r.configured)]
        for role in roles:
            caller = role.proves(token, peer)
            if caller is not None:
                return caller
        if self.tickets is not None and ticket is not None:
            return self.tickets.admit(action, ticket)
        if not self.role.configured:  # only tickets guard this method
            return Unauthenticated(
                f"{action} needs a router-signed ticket (metadata '{TICKET_METADATA}')",
                reason="CREDENTIALS_MISSING",
            )
        return _refusal(action, self.role, token, peer)


def _refusal(action: str, role: Role, token: str | None, peer: Sequence[str]) -> ModelyardError:
    """What is missing, said so that the caller can fix it (never which secret was close)."""
    if not (role.keys or role.identities):
        return PermissionDenied(
            f"{action} is for {role.name}, and this server has none configured ({role.hint})",
            reason="ROLE_NOT_CONFIGURED",
        )
    needs: list[str] = []
    if role.keys:
        needs.append(f"{role.secret} ('authorization: Bearer <secret>'; {role.hint})")
    if role.identities:
        names = ", ".join(sorted(role.identities))
        needs.append(f"a client certificate with the identity {names}")
    wanted = f"{action} is for {role.name}: it needs {' and '.join(needs)}"
    if (role.keys and token is None) or (role.identities and not peer):
        what = f"no {role.secret}" if role.keys and token is None else "no client certificate"
        return Unauthenticated(f"{wanted}; this call sent {what}", reason="CREDENTIALS_MISSING")
    if role.keys and role.key_name(token) is None:
        return PermissionDenied(
            f"{wanted}; the one sent is not valid",
            reason="CREDENTIALS_INVALID",
        )
    shown = ", ".join(p for p in peer if "://" in p) or ", ".join(peer)
    return PermissionDenied(
        f"{wanted}; the client certificate names {shown}", reason="IDENTITY_NOT_ALLOWED"
    )


def service_prefix(full_service_name: str) -> str:
    """The method prefix of a whole service, e.g. "/modelyard.v1.WorkerService/"."""
    return f"/{full_service_name}/"


def method_name(full_service_name: str, method: str) -> str:
    return f"/{full_service_name}/{method}"


def peer_identities(context: grpc.aio.ServicerContext[Any, Any]) -> tuple[str, ...]:
    """The SAN values of the verified client certificate (empty without mTLS)."""
    values = context.auth_context().get(_SAN_PROPERTY, [])
    return tuple(v.decode(errors="replace") if isinstance(v, bytes) else str(v) for v in values)


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "modelyard_caller", default=None
)


def current_caller() -> Caller | None:
    """The caller the gate let into the running handler (None: the method is open)."""
    return _caller.get()


def enter_caller(caller: Caller) -> None:
    """Make `caller` current for the running task: for fronts that check a `Rule` themselves."""
    _caller.set(caller)


class AccessGate(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls that do not prove the role their method is for.

    The first rule covering a method applies; methods no rule covers pass, and so do
    methods of a rule whose role has no credentials configured.
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._rules = list(rules)

    @property
    def enabled(self) -> bool:
        return any(r.enabled for r in self._rules)

    def rule_for(self, method: str) -> Rule | None:
        rule = next((r for r in self._rules if r.covers(method)), None)
        return rule if rule is not None and rule.enabled else None

    def error_for(
        self, method: str, metadata: Metadata | None, peer: Sequence[str] = ()
    ) -> ModelyardError | None:
        """The refusal for a call of `method`, or None to let it through."""
        rule = self.rule_for(method)
        if rule is None:
            return None
        outcome = rule.decide(_action(method), bearer_token(metadata), peer)
        return outcome if isinstance(outcome, ModelyardError) else None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        rule = self.rule_for(method)
        if handler is None or rule is None:
            return handler
        action = _action(method)
        metadata = handler_call_details.invocation_metadata
        token = bearer_token(metadata)
        ticket = metadata_value(metadata, TICKET_METADATA) if rule.tickets else None

        def admit(context: grpc.aio.ServicerContext[Any, Any]) -> Caller | ModelyardError:
            return rule.decide(action, token, peer_identities(context), ticket)

        return _guarded(handler, admit, rule.tickets)


def _action(method: str) -> str:
    return method.rpartition("/")[2] or method


def _guarded(
    handler: grpc.RpcMethodHandler,
    admit: Callable[[grpc.aio.ServicerContext[Any, Any]], Caller | ModelyardError],
    tickets: TicketAdmission | None,
) -> grpc.RpcMethodHandler:
    """`handler`, run only after `admit` accepts the call; the body is parsed after that, so
    a refusal costs nothing however big or malformed the body is. A ticket is redeemed
    once the body says which request it is for."""
    parse = handler.request_deserializer or _as_is

    async def admitted(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        caller = admit(context)
        if not isinstance(caller, Caller):
            await abort(context, caller)  # raises: the call ends here
            return None
        enter_caller(caller)
        try:
            request = parse(raw)
        except (DecodeError, ValueError):
            await abort(context, InvalidArgument("the request body is not a valid message"))
        if caller.ticket is not None and tickets is not None:
            try:
                tickets.redeem(caller.ticket, request)
            except ModelyardError as err:
                await abort(context, err)
        return request

    async def unary(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await handler.unary_unary(await admitted(raw, context), context)

    async def streaming(
        raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async for reply in handler.unary_stream(await admitted(raw, context), context):
            yield reply

    ser = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, _as_is, ser)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming, _as_is, ser)
    return _client_streams_refused(handler)


def _as_is(data: bytes) -> bytes:
    return data


def _client_streams_refused(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """No modelyard service takes a client stream: refuse one rather than pass it unguarded."""
    refused = PermissionDenied("client-streaming calls are not served", reason="UNSUPPORTED")

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort(context, refused)

    ser = handler.response_serializer
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse, _as_is, ser)
    return grpc.stream_stream_rpc_method_handler(refuse, _as_is, ser)
