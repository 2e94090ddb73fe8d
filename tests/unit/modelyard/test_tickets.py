"""Router-signed tickets: what a worker accepts, once, and only for the request named.

The gRPC test runs the worker's real gate over a recorder that parses a real
WorkerServiceGenerateRequest, so the binding to the request body is what is checked.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelyard.auth import current_caller
from modelyard.bearer import bearer_metadata
from modelyard.errors import ModelyardError, from_rpc_error
from modelyard.server import start_server
from modelyard.tickets import (
    TICKET_METADATA,
    Grant,
    TicketSigner,
    TicketVerifier,
    unverified_nonce,
)
from modelyard.v1 import model_pb2, worker_pb2
from worker.auth import GENERATE, SERVICE_NAME, worker_gate


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def keypair(tmp_path: Path, kid: str) -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.generate()
    public = tmp_path / f"{kid}.pub.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key, f"{kid}:{public}"


def reason(call: Any, *args: Any) -> str:
    with pytest.raises(ModelyardError) as err:
        call(*args)
    return err.value.reason


def test_a_ticket_is_redeemed_once_for_the_request_it_names(tmp_path: Path) -> None:
    clock = Clock()
    key, entry = keypair(tmp_path, "k1")
    signer = TicketSigner(key, "k1", ttl_s=30, clock=clock)
    verifier = TicketVerifier.from_files([entry], clock=clock)

    ticket = signer.issue("req-1", "smollm2@1")
    claims = verifier.verify(ticket)
    assert reason(verifier.redeem, claims, "req-2", "smollm2@1") == "TICKET_MISMATCH"
    assert reason(verifier.redeem, claims, "req-1", "other@1") == "TICKET_MISMATCH"
    verifier.redeem(claims, "req-1", "smollm2@1")
    assert reason(verifier.redeem, claims, "req-1", "smollm2@1") == "TICKET_REUSED"

    clock.now += 31
    assert verifier.verify(signer.issue("req-3", "smollm2@1")).request_id == "req-3"
    assert reason(verifier.verify, ticket) == "TICKET_EXPIRED"


def test_forged_tampered_and_untrusted_tickets_are_refused(tmp_path: Path) -> None:
    clock = Clock()
    key, entry = keypair(tmp_path, "k1")
    verifier = TicketVerifier.from_files([entry], clock=clock)
    ticket = TicketSigner(key, "k1", clock=clock).issue("req-1", "m@1")
    body, signature = ticket.split(".")

    # Another key claiming to be k1, a key id nobody trusts, a flipped claim, junk.
    forged = TicketSigner(Ed25519PrivateKey.generate(), "k1", clock=clock).issue("req-1", "m@1")
    stranger = TicketSigner(Ed25519PrivateKey.generate(), "k9", clock=clock).issue("r", "m@1")
    other_body = TicketSigner(key, "k1", clock=clock).issue("req-2", "m@1").split(".")[0]
    assert reason(verifier.verify, forged) == "TICKET_INVALID"
    assert reason(verifier.verify, stranger) == "TICKET_KEY_UNKNOWN"
    assert reason(verifier.verify, f"{other_body}.{signature}") == "TICKET_INVALID"
    nested = base64.urlsafe_b64encode(b"[" * 1500).decode().rstrip("=")  # deep JSON
    for junk in ("", ".", "a.b.c", "x" * 5000, f"{body}.", "!!.??", "é.é", f"{nested}.x"):
        assert reason(verifier.verify, junk) == "TICKET_INVALID"
        assert unverified_nonce(junk) is None or junk == f"{body}."  # a body, unsigned
    assert verifier.verify(ticket).request_id == "req-1"
    assert unverified_nonce(ticket) == verifier.verify(ticket).nonce


def test_keys_rotate_without_downtime(tmp_path: Path) -> None:
    clock = Clock()
    old, old_entry = keypair(tmp_path, "old")
    new, new_entry = keypair(tmp_path, "new")
    in_flight = TicketSigner(old, "old", clock=clock).issue("r1", "m@1")
    # Workers trust both while routers switch to the new key...
    both = TicketVerifier.from_files([old_entry, new_entry], clock=clock)
    both.verify(in_flight)
    both.verify(TicketSigner(new, "new", clock=clock).issue("r2", "m@1"))
    # ...then drop the old one.
    only_new = TicketVerifier.from_files([new_entry], clock=clock)
    assert reason(only_new.verify, in_flight) == "TICKET_KEY_UNKNOWN"


def test_remembered_tickets_are_bounded(tmp_path: Path) -> None:
    clock = Clock()
    key, entry = keypair(tmp_path, "k1")
    signer = TicketSigner(key, "k1", ttl_s=10, clock=clock)
    verifier = TicketVerifier.from_files([entry], clock=clock, max_outstanding=3)
    for i in range(3):
        verifier.redeem(verifier.verify(signer.issue(f"r{i}", "m@1")), f"r{i}", "m@1")
    extra = verifier.verify(signer.issue("r3", "m@1"))
    assert reason(verifier.redeem, extra, "r3", "m@1") == "TICKETS_EXHAUSTED"
    clock.now += 11  # the first three expired: their nonces are forgotten
    fresh = verifier.verify(signer.issue("r4", "m@1"))
    verifier.redeem(fresh, "r4", "m@1")


def test_lifetimes_a_router_would_never_sign_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        TicketSigner(Ed25519PrivateKey.generate(), "k", ttl_s=3600)


@pytest.fixture
async def worker_port(tmp_path: Path) -> AsyncIterator[tuple[int, TicketSigner, list[str]]]:
    key, entry = keypair(tmp_path, "k1")
    ran: list[str] = []

    async def generate(request: worker_pb2.WorkerServiceGenerateRequest, context: Any) -> Any:
        caller = current_caller()
        ran.append(f"{request.request_id}:{caller.key_name if caller else ''}")
        yield worker_pb2.WorkerServiceGenerateResponse()

    handler = grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Generate": grpc.unary_stream_rpc_method_handler(
                generate,
                worker_pb2.WorkerServiceGenerateRequest.FromString,
                worker_pb2.WorkerServiceGenerateResponse.SerializeToString,
            )
        },
    )
    gate = worker_gate(api_key="router-key", tickets=TicketVerifier.from_files([entry]))
    running = await start_server(
        "127.0.0.1:0",
        lambda server: server.add_generic_rpc_handlers((handler,)),
        [SERVICE_NAME],
        interceptors=[gate],
    )
    yield running.port, TicketSigner(key, "k1"), ran
    await running.stop(0)


async def test_a_worker_admits_one_generate_per_ticket(
    worker_port: tuple[int, TicketSigner, list[str]],
) -> None:
    port, signer, ran = worker_port
    model = model_pb2.Model(name="smollm2", version="1")
    request = worker_pb2.WorkerServiceGenerateRequest(request_id="r1", model=model, prompt="hi")

    async def generate(metadata: tuple[tuple[str, str], ...]) -> tuple[grpc.StatusCode, str]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream(
                GENERATE,
                worker_pb2.WorkerServiceGenerateRequest.SerializeToString,
                worker_pb2.WorkerServiceGenerateResponse.FromString,
            )
            try:
                async for _ in call(request, timeout=10, metadata=metadata):
                    pass
            except grpc.aio.AioRpcError as err:
                return err.code(), from_rpc_error(err).reason
            return grpc.StatusCode.OK, ""

    ticket = signer.issue("r1", "smollm2@1")
    assert await generate(((TICKET_METADATA, ticket),)) == (grpc.StatusCode.OK, "")
    assert await generate(((TICKET_METADATA, ticket),)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "TICKET_REUSED",
    )
    wrong = signer.issue("r2", "smollm2@1")
    assert await generate(((TICKET_METADATA, wrong),)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "TICKET_MISMATCH",
    )
    assert (await generate(()))[0] == grpc.StatusCode.UNAUTHENTICATED
    # The router's own key still works beside tickets.
    assert await generate(bearer_metadata("router-key")) == (grpc.StatusCode.OK, "")
    assert len(ran) == 2 and ran[0] == "r1:ticket:k1" and ran[1].startswith("r1:key-")


def test_tickets_alone_guard_generate(tmp_path: Path) -> None:
    _, entry = keypair(tmp_path, "k1")
    gate = worker_gate(tickets=TicketVerifier.from_files([entry]))
    # No router key configured, but the worker verifies tickets: it is not open.
    error = gate.error_for(GENERATE, ())
    assert error is not None and error.reason == "CREDENTIALS_MISSING"
    assert TICKET_METADATA in error.message


def test_a_grant_travels_in_the_ticket_and_plain_tickets_still_verify(tmp_path: Path) -> None:
    clock = Clock()
    key, entry = keypair(tmp_path, "k1")
    signer = TicketSigner(key, "k1", ttl_s=30, clock=clock)
    verifier = TicketVerifier.from_files([entry], clock=clock)
    grant = Grant(route="chat", arm="b", attempt=2, client="app", max_tokens=64, router="r0")
    claims = verifier.verify(signer.issue("req-1", "smollm2@1", grant))
    assert claims.grant == grant and claims.raw
    plain = verifier.verify(signer.issue("req-2", "smollm2@1"))  # what older routers issue
    assert plain.grant == Grant()
    # The router reads its own tickets, expired too: the report may come after expiry.
    ticket = signer.issue("req-3", "smollm2@1", grant)
    clock.now += 3600
    assert signer.read(ticket).grant == grant
    assert reason(verifier.verify, ticket) == "TICKET_EXPIRED"
