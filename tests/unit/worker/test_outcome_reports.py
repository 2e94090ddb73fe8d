"""Outcome reports from a worker to a real gRPC router servicer on loopback: what piles up
goes as one ReportOutcomes batch, a router without it gets reports one by one, refusals and
outages are counted, not retried forever."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from modelyard.local_mesh import free_port
from modelyard.server import start_server
from modelyard.tickets import Claims, Grant, TicketSigner
from modelyard.v1 import router_pb2, router_pb2_grpc
from router.auth import SERVICE_NAME
from worker.outcome_reports import OutcomeReporter

SIGNER = TicketSigner(Ed25519PrivateKey.generate(), "k1")
NOT_OURS = grpc.StatusCode.FAILED_PRECONDITION


def claims(i: int) -> Claims:
    return SIGNER.mint(f"req-{i}", "m@1", Grant(router="r1"))


def report(c: Claims) -> router_pb2.ReportOutcomeRequest:
    return router_pb2.ReportOutcomeRequest(ticket=c.raw)


class OldRouter(router_pb2_grpc.RouterServiceServicer):
    """A router from before ReportOutcomes (the generated base answers UNIMPLEMENTED)."""

    def __init__(self, refuse: frozenset[str] = frozenset(), outages: int = 0) -> None:
        self.calls: list[list[str]] = []  # the tickets of each call, in order
        self.refuse = refuse
        self.outages = outages  # calls answered UNAVAILABLE first

    async def _outage(self, context: Any) -> None:
        if self.outages > 0:
            self.outages -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")

    async def ReportOutcome(
        self, request: router_pb2.ReportOutcomeRequest, context: Any
    ) -> router_pb2.ReportOutcomeResponse:
        await self._outage(context)
        self.calls.append([request.ticket])
        if request.ticket in self.refuse:
            await context.abort(NOT_OURS, "no pick is outstanding")
        return router_pb2.ReportOutcomeResponse()


class Router(OldRouter):
    async def ReportOutcomes(
        self, request: router_pb2.ReportOutcomesRequest, context: Any
    ) -> router_pb2.ReportOutcomesResponse:
        await self._outage(context)
        self.calls.append([r.ticket for r in request.reports])
        reply = router_pb2.ReportOutcomesResponse()
        for r in request.reports:
            refused = r.ticket in self.refuse
            reply.results.add(
                status_code=NOT_OURS.value[0] if refused else 0,
                reason="TICKET_NOT_OUTSTANDING" if refused else "",
            )
        return reply


def old_router(**kwargs: Any) -> OldRouter:
    return OldRouter(**kwargs)  # type: ignore[abstract]  # the stub's methods are abstract


def new_router(**kwargs: Any) -> Router:
    return Router(**kwargs)  # type: ignore[abstract]


@asynccontextmanager
async def reporting_to(router: OldRouter, **kwargs: Any) -> AsyncIterator[OutcomeReporter]:
    address = f"127.0.0.1:{free_port()}"
    server = await start_server(
        address,
        lambda s: router_pb2_grpc.add_RouterServiceServicer_to_server(router, s),
        [SERVICE_NAME],
    )
    reporter = OutcomeReporter({"r1": address}, **{"senders": 1, "backoff_s": 0.01, **kwargs})
    try:
        yield reporter
    finally:
        await reporter.close()
        await server.stop(0)


async def burst(reporter: OutcomeReporter, tickets: list[Claims]) -> None:
    """Submit all at once (no await between: the queue fills before a sender runs)."""
    for c in tickets:
        reporter.submit(c, report(c))
    await asyncio.wait_for(reporter.flush(), 30)


@pytest.mark.asyncio
async def test_what_piles_up_goes_as_one_batch() -> None:
    router = new_router()
    tickets = [claims(i) for i in range(300)]
    async with reporting_to(router) as reporter:
        await burst(reporter, tickets)
        assert reporter.sent == 300 and reporter.dropped == 0
    # All were queued before the one sender ran: batches of at most 256.
    assert [len(call) for call in router.calls] == [256, 44]
    assert [t for call in router.calls for t in call] == [c.raw for c in tickets]


@pytest.mark.asyncio
async def test_reports_of_streams_ending_within_the_linger_share_one_call() -> None:
    router = new_router()
    tickets = [claims(i) for i in range(10)]
    # Four senders: the one gathering holds the others off, so they cannot split the batch.
    async with reporting_to(router, senders=4, linger_s=0.5) as reporter:
        for c in tickets:  # streams ending 5 ms apart: ~50 ms, well inside the linger
            reporter.submit(c, report(c))
            await asyncio.sleep(0.005)
        await asyncio.wait_for(reporter.flush(), 30)
        assert reporter.sent == 10 and reporter.dropped == 0
    assert [len(call) for call in router.calls] == [10]
    assert [t for call in router.calls for t in call] == [c.raw for c in tickets]


@pytest.mark.asyncio
async def test_a_router_without_batches_gets_reports_one_by_one() -> None:
    router = old_router()
    tickets = [claims(i) for i in range(20)]
    async with reporting_to(router) as reporter:
        await burst(reporter, tickets[:10])
        await burst(reporter, tickets[10:])
        assert reporter.sent == 20 and reporter.dropped == 0
        # Asked once: the second burst went one by one straight away.
        assert len(reporter._one_by_one) == 1
    assert [t for call in router.calls for t in call] == [c.raw for c in tickets]


@pytest.mark.asyncio
async def test_refused_reports_are_counted_and_the_rest_delivered() -> None:
    tickets = [claims(i) for i in range(10)]
    refused = frozenset(c.raw for c in tickets[3:5])
    for router in (new_router(refuse=refused), old_router(refuse=refused)):
        async with reporting_to(router) as reporter:
            await burst(reporter, tickets)
            assert (reporter.sent, reporter.dropped) == (8, 2)


@pytest.mark.asyncio
async def test_an_outage_is_retried_and_a_long_one_gives_up() -> None:
    tickets = [claims(i) for i in range(6)]
    async with reporting_to(new_router(outages=2), tries=5) as reporter:
        await burst(reporter, tickets)
        assert (reporter.sent, reporter.dropped) == (6, 0)
    async with reporting_to(new_router(outages=100), tries=3) as reporter:
        await burst(reporter, tickets)
        assert (reporter.sent, reporter.dropped) == (0, 6)
