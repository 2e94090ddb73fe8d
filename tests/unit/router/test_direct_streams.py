"""Direct streams, end to end on loopback: the router picks and signs a ticket, the client
streams from the worker, the worker reports the outcome back (tests/unit/router/direct_mesh.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from modelyard.bearer import bearer_metadata
from modelyard.client import AsyncClient, Client
from modelyard.errors import from_rpc_error
from modelyard.refs import model_key
from modelyard.server import start_server
from modelyard.tickets import TICKET_METADATA, Claims
from modelyard.v1 import common_pb2, router_pb2, worker_pb2, worker_pb2_grpc
from tests.unit.router.direct_mesh import (
    CLIENT_KEY,
    REPORTER_TOKEN,
    DirectMesh,
    direct_mesh,
)
from tests.unit.router.doubles import (
    LOOP_SCOPE,
    WORKER_SERVICE,
    Fail,
    FakeWorker,
    free_address,
    started,
)

pytestmark = pytest.mark.asyncio(loop_scope=LOOP_SCOPE)

PROMPT = "The quick brown fox"


async def text_of(client: AsyncClient, *, direct: bool, **kwargs: Any) -> tuple[str, Any]:
    stream = client.generate(
        model="sim-a", prompt=PROMPT, max_tokens=12, temperature=0.0, direct=direct, **kwargs
    )
    text = "".join([delta.text async for delta in stream])
    return text, stream


async def pick(mesh: DirectMesh, **sampling: Any) -> router_pb2.PickWorkerResponse:
    request = router_pb2.GenerateRequest(
        model="sim-a", prompt=PROMPT, sampling=common_pb2.SamplingParams(**sampling)
    )
    reply: router_pb2.PickWorkerResponse = await mesh.router_stub().PickWorker(
        router_pb2.PickWorkerRequest(request=request),
        timeout=10,
        metadata=bearer_metadata(CLIENT_KEY),
    )
    return reply


async def on_worker(
    mesh: DirectMesh, reply: router_pb2.PickWorkerResponse, request: Any = None
) -> str:
    """Stream `request` (default: the prepared one) from the picked worker with the
    ticket; the status it ends with (its reason, when refused)."""
    async with grpc.aio.insecure_channel(reply.worker_address) as channel:
        stub: Any = worker_pb2_grpc.WorkerServiceStub(channel)
        call = stub.Generate(
            request or reply.worker_request,
            timeout=10,
            metadata=((TICKET_METADATA, reply.ticket),),
        )
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as err:
            return from_rpc_error(err).reason or err.code().name
        return "OK"


async def test_a_direct_stream_shows_what_the_proxied_one_does(tmp_path: Path) -> None:
    async with direct_mesh(tmp_path) as mesh, mesh.client() as client:
        proxied, via_router = await text_of(client, direct=False)
        direct, straight = await text_of(client, direct=True, request_id="direct-1")
        assert proxied and direct == proxied
        assert straight.started.request_id == "direct-1"
        assert (straight.started.model, straight.started.attempt) == ("sim-a", 1)
        assert straight.started.worker_id == via_router.started.worker_id
        assert straight.finished.usage.output_tokens == via_router.finished.usage.output_tokens
        assert straight.finished.cost == via_router.finished.cost

        def blocking() -> str:  # the blocking client, off the loop the servers run on
            with Client(mesh.address, api_key=CLIENT_KEY, timeout_s=30) as sync:
                stream = sync.generate(
                    model="sim-a", prompt=PROMPT, max_tokens=12, temperature=0.0, direct=True
                )
                return "".join(d.text for d in stream)

        assert await asyncio.to_thread(blocking) == proxied


async def test_the_worker_holds_a_ticket_to_its_request(tmp_path: Path) -> None:
    async with direct_mesh(tmp_path) as mesh:
        reply = await pick(mesh, max_tokens=4)
        assert await on_worker(mesh, reply) == "OK"
        assert await on_worker(mesh, reply) == "TICKET_REUSED"

        other = await pick(mesh, max_tokens=4)
        elsewhere = worker_pb2.WorkerServiceGenerateRequest()
        elsewhere.CopyFrom(other.worker_request)
        elsewhere.model.CopyFrom(mesh.models[1])  # sim-b: the ticket names sim-a
        assert await on_worker(mesh, other, elsewhere) == "TICKET_MISMATCH"

        bounded = await pick(mesh, max_tokens=4)
        greedy = worker_pb2.WorkerServiceGenerateRequest()
        greedy.CopyFrom(bounded.worker_request)
        greedy.sampling.max_tokens = 50
        assert await on_worker(mesh, bounded, greedy) == "TICKET_LIMIT"
        greedy.sampling.max_tokens = 0  # no bound at all is more than 4 too
        assert await on_worker(mesh, bounded, greedy) == "TICKET_LIMIT"
        assert await on_worker(mesh, bounded) == "OK"  # the ticket was not spent by those


async def test_a_direct_request_counts_until_the_worker_reports_it(tmp_path: Path) -> None:
    async with direct_mesh(tmp_path) as mesh:
        before = await mesh.stats("sim-a")
        reply = await pick(mesh, max_tokens=6)
        worker = reply.worker_address
        assert mesh.in_flight == {worker: 1} and mesh.admitted == 1
        assert await on_worker(mesh, reply) == "OK"
        await mesh.flush_reports()
        assert mesh.in_flight == {} and mesh.admitted == 0
        after = await mesh.stats("sim-a")
        assert after.requests == before.requests + 1
        assert after.output_tokens == before.output_tokens + 6
        assert after.ttft.p50_ms > 0 and after.errors == before.errors
        latency = mesh.router.parts.accounting.latency.get(worker, model_key("sim-a", "1"))
        assert latency.ttft_ms is not None


async def test_only_a_worker_may_report_an_outcome(tmp_path: Path) -> None:
    async with direct_mesh(tmp_path) as mesh:
        reply = await pick(mesh, max_tokens=4)
        stub = mesh.router_stub()
        report = router_pb2.ReportOutcomeRequest(
            ticket=reply.ticket, usage=common_pb2.Usage(output_tokens=1)
        )

        async def status(metadata: Any, request: Any = report) -> grpc.StatusCode:
            try:
                await stub.ReportOutcome(request, timeout=5, metadata=metadata)
            except grpc.aio.AioRpcError as err:
                return err.code()
            return grpc.StatusCode.OK

        assert await status(()) == grpc.StatusCode.UNAUTHENTICATED
        assert await status(bearer_metadata(CLIENT_KEY)) == grpc.StatusCode.PERMISSION_DENIED
        forged = router_pb2.ReportOutcomeRequest(ticket=reply.ticket[:-4] + "AAAA")
        assert await status(bearer_metadata(REPORTER_TOKEN), forged) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert mesh.in_flight == {reply.worker_address: 1}  # still waiting for the worker
        assert await status(bearer_metadata(REPORTER_TOKEN)) == grpc.StatusCode.OK
        assert mesh.in_flight == {}
        # Once per ticket: a second report is not counted again.
        assert await status(bearer_metadata(REPORTER_TOKEN)) == (
            grpc.StatusCode.FAILED_PRECONDITION
        )


@pytest.mark.parametrize(
    "code, details",
    [
        (grpc.StatusCode.UNAVAILABLE, "gone"),
        # A worker's gRPC server that begins to stop cancels calls not yet handed to it.
        (grpc.StatusCode.CANCELLED, "CANCELLED"),
    ],
)
async def test_a_worker_failing_before_the_first_token_makes_the_client_pick_again(
    tmp_path: Path, code: grpc.StatusCode, details: str
) -> None:
    broken = FakeWorker("broken", [started(), Fail(code, details)])
    address = free_address()
    server = await start_server(
        address,
        lambda s: worker_pb2_grpc.add_WorkerServiceServicer_to_server(broken, s),
        [WORKER_SERVICE],
    )
    try:
        # Warm with nothing queued: the scheduler's first choice over a cold real worker.
        warm = worker_pb2.RESIDENCY_STATE_WARM
        broken.set_models(worker_pb2.ModelStatus(name="sim-a", version="1", state=warm))
        async with direct_mesh(tmp_path, extra_addresses=[address]) as mesh, mesh.client() as c:
            text, stream = await text_of(c, direct=True)
            assert len(broken.requests) == 1  # it was tried first, and failed
            assert text and stream.started.worker_id != "broken"
            assert stream.started.attempt == 2
            await mesh.flush_reports()
            assert mesh.in_flight == {} and mesh.admitted == 0  # the failed pick let go
    finally:
        await server.stop(0)


async def test_without_a_ticket_key_pick_worker_says_how_to_set_one(tmp_path: Path) -> None:
    async with direct_mesh(tmp_path, ticket_key="") as mesh, mesh.client() as client:
        with pytest.raises(Exception, match="MODELYARD_ROUTER_TICKET_KEY") as err:
            await text_of(client, direct=True)
        assert getattr(err.value, "reason", "") == "NO_TICKET_KEY"


async def test_a_batch_of_reports_is_judged_report_by_report(tmp_path: Path) -> None:
    async with direct_mesh(tmp_path) as mesh:
        first, second = await pick(mesh, max_tokens=4), await pick(mesh, max_tokens=4)
        stub = mesh.router_stub()
        forged = first.ticket[:-4] + "AAAA"
        batch = router_pb2.ReportOutcomesRequest(
            reports=[
                router_pb2.ReportOutcomeRequest(ticket=t, usage=common_pb2.Usage(output_tokens=1))
                for t in (first.ticket, forged, first.ticket, second.ticket)
            ]
        )
        with pytest.raises(grpc.aio.AioRpcError) as client_err:
            await stub.ReportOutcomes(batch, timeout=5, metadata=bearer_metadata(CLIENT_KEY))
        assert client_err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        reply = await stub.ReportOutcomes(
            batch, timeout=5, metadata=bearer_metadata(REPORTER_TOKEN)
        )
        assert [(r.status_code, r.reason) for r in reply.results] == [
            (grpc.StatusCode.OK.value[0], ""),
            (grpc.StatusCode.PERMISSION_DENIED.value[0], "TICKET_INVALID"),
            (grpc.StatusCode.FAILED_PRECONDITION.value[0], "TICKET_NOT_OUTSTANDING"),
            (grpc.StatusCode.OK.value[0], ""),
        ]
        assert mesh.in_flight == {} and mesh.admitted == 0

        too_many = router_pb2.ReportOutcomesRequest(reports=[batch.reports[0]] * 257)
        for request in (too_many, router_pb2.ReportOutcomesRequest()):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ReportOutcomes(
                    request, timeout=5, metadata=bearer_metadata(REPORTER_TOKEN)
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "1 to 256 reports" in (err.value.details() or "")


async def test_a_report_of_the_ticket_as_issued_skips_the_signature_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with direct_mesh(tmp_path) as mesh:
        desk = mesh.router.parts.desk
        assert desk is not None and desk._signer is not None
        checked: list[str] = []
        read = desk._signer.read

        def counted(ticket: str) -> Claims:
            checked.append(ticket)
            return read(ticket)

        monkeypatch.setattr(desk._signer, "read", counted)
        reply = await pick(mesh, max_tokens=4)
        desk.report(router_pb2.ReportOutcomeRequest(ticket=reply.ticket))
        assert checked == [] and mesh.in_flight == {}
        # Not held any more: the full check runs and says the ticket is ours but spent.
        with pytest.raises(Exception, match="no pick is outstanding"):
            desk.report(router_pb2.ReportOutcomeRequest(ticket=reply.ticket))
        assert checked == [reply.ticket]
