"""Fuzz every RPC of every service (Registry, Outcome, Router, Worker) of a real sim mesh.

Requests come from the message descriptors (tests/robustness/proto_strategies.py), so a
field added to a proto is fuzzed without touching this file; a real model name is mixed
into name fields so requests get past "not found". Most cases carry the role's valid
credential (the body is reached), the rest a random one. Per case: a defined status
(never UNKNOWN, never INTERNAL: every input here is the client's), no exception text or
paths in the details, and a wrong credential never gets through. Per RPC, afterwards:
every service alive, healthy, under its RSS bound, and the router still serving.
`derandomize=True`: the same cases on every run.
"""

from __future__ import annotations

import asyncio
import os
import string
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import text_format
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelyard.bearer import bearer_metadata
from modelyard.v1 import (
    common_pb2,
    model_pb2,
    outcomes_pb2,
    registry_pb2,
    router_pb2,
    worker_pb2,
)
from tests.robustness.conftest import CASES, CODES
from tests.robustness.invariants import leaks, mesh_trouble
from tests.robustness.proto_strategies import ProtoStrategies
from tests.robustness.sim_mesh import (
    ADMIN_TOKEN,
    CLIENT_KEY,
    OPERATOR_TOKEN,
    OUTCOME_WRITER,
    ROUTER_READS,
    ROUTER_TO_WORKER,
    SimMesh,
)

pytestmark = pytest.mark.integration

SERVICES: list[ServiceDescriptor] = [
    registry_pb2.DESCRIPTOR.services_by_name["RegistryService"],
    router_pb2.DESCRIPTOR.services_by_name["RouterService"],
    worker_pb2.DESCRIPTOR.services_by_name["WorkerService"],
    outcomes_pb2.DESCRIPTOR.services_by_name["OutcomeService"],
]
# The credential each method's role holds; every other method takes the service's default.
TOKENS = {
    "RegistryService": ROUTER_READS,
    "RouterService": CLIENT_KEY,
    "WorkerService": ROUTER_TO_WORKER,
    "OutcomeService": ROUTER_READS,
    "OutcomeService.RecordOutcomes": OUTCOME_WRITER,
    "OutcomeService.AttachFeedback": OUTCOME_WRITER,
    "OutcomeService.RecordEvaluation": OUTCOME_WRITER,
    "RegistryService.ControlRollout": ADMIN_TOKEN,
    "RegistryService.RegisterModel": ADMIN_TOKEN,
    "RegistryService.SetStage": ADMIN_TOKEN,
    "RegistryService.DeleteModel": ADMIN_TOKEN,
    "RegistryService.PutRoute": ADMIN_TOKEN,
    "RegistryService.DeleteRoute": ADMIN_TOKEN,
    "WorkerService.LoadModel": OPERATOR_TOKEN,
    "WorkerService.UnloadModel": OPERATOR_TOKEN,
}
VALID_TOKENS = {
    ADMIN_TOKEN,
    CLIENT_KEY,
    OPERATOR_TOKEN,
    OUTCOME_WRITER,
    ROUTER_READS,
    ROUTER_TO_WORKER,
}
# Streams that stay open waiting for changes: a case reads the first event, if any comes
# within this long, and cancels.
LONG_LIVED = {"Watch", "WatchStatus"}
OPEN_WAIT_S = 0.3
CALL_TIMEOUT_S = 20.0
MAX_EVENTS = 6  # of a generation: enough to be past the first token
# Cases per RPC, sized for the whole fuzz suite to take about 3 minutes on 2 loaded cores;
# MODELYARD_FUZZ_SCALE=10 runs ten times as many (same seed: the first cases are the same).
SCALE = float(os.environ.get("MODELYARD_FUZZ_SCALE", "1"))
EXAMPLES_EACH = round(60 * SCALE)
# The client-facing generation RPCs carry the most fields and reach the most code.
EXAMPLES = {
    "RouterService.Generate": round(120 * SCALE),
    "RouterService.Complete": round(120 * SCALE),
}
EXAMPLES_LONG_LIVED = round(30 * SCALE)
FEEDBACK_ID = "fuzz-feedback-1"  # a finished request (prepare() makes it)

# A name the mesh knows, mixed into the name fields: past "not found" into the code behind.
KNOWN = st.sampled_from(["sim-a", "sim-a@1", "auto", ""])
PROTOS = ProtoStrategies(
    {
        "modelyard.v1.Model.name": st.just("sim-a"),
        "modelyard.v1.Model.version": st.just("1"),
        "modelyard.v1.GenerateRequest.model": KNOWN,
        "modelyard.v1.CompleteRequest.model": KNOWN,
        "modelyard.v1.GetModelRequest.name": KNOWN,
        "modelyard.v1.UnloadModelRequest.name": KNOWN,
        "modelyard.v1.GenerateRequest.prompt": st.just("Tell me about the mesh"),
        "modelyard.v1.CompleteRequest.prompt": st.just("Tell me about the mesh"),
    }
)


@dataclass(frozen=True)
class Rpc:
    service: ServiceDescriptor
    method: MethodDescriptor

    @property
    def name(self) -> str:
        return f"{self.service.name}.{self.method.name}"

    @property
    def path(self) -> str:
        return f"/{self.service.full_name}/{self.method.name}"

    @property
    def token(self) -> str:
        return TOKENS.get(self.name, TOKENS[self.service.name])

    def address(self, mesh: SimMesh) -> str:
        local = mesh.local
        by_service = {
            "RegistryService": local.registry_address,
            "RouterService": local.router_address,
            "WorkerService": local.worker_addresses[0],
            "OutcomeService": local.registry_address,  # the registry process serves it
        }
        return by_service[self.service.name]


RPCS = [Rpc(service, method) for service in SERVICES for method in service.methods]


def seeds(mesh: SimMesh) -> dict[str, Message]:
    """A valid request per RPC (the empty message for the rest): the fuzz mostly changes
    one or two of its fields. Writes aim at models and routes of their own, never at the
    model the health check generates with."""
    target = model_pb2.Model()
    target.CopyFrom(mesh.model)
    target.name = "fuzz-target"
    route = model_pb2.Route(
        name="fuzz-route", arms=[model_pb2.RouteArm(name="a", model="sim-a", weight=1)]
    )
    sampling = common_pb2.SamplingParams(max_tokens=8)
    prompt = "Tell me about the mesh"
    served = model_pb2.Model(name=mesh.model.name, version=mesh.model.version)
    return {
        "RegistryService.RegisterModel": registry_pb2.RegisterModelRequest(model=target),
        "RegistryService.GetModel": registry_pb2.GetModelRequest(name="sim-a", version="1"),
        "RegistryService.SetStage": registry_pb2.SetStageRequest(
            name="fuzz-target", version="1", stage=model_pb2.STAGE_STAGING
        ),
        "RegistryService.DeleteModel": registry_pb2.DeleteModelRequest(
            name="fuzz-target", version="1"
        ),
        "RegistryService.PutRoute": registry_pb2.PutRouteRequest(route=route),
        "RegistryService.GetRoute": registry_pb2.GetRouteRequest(name="fuzz-route"),
        "RegistryService.DeleteRoute": registry_pb2.DeleteRouteRequest(name="fuzz-route"),
        "RegistryService.ControlRollout": registry_pb2.ControlRolloutRequest(
            route="fuzz-route", action=registry_pb2.ROLLOUT_CONTROL_PAUSE
        ),
        "OutcomeService.RecordEvaluation": outcomes_pb2.RecordEvaluationRequest(
            run=outcomes_pb2.EvaluationRun(
                id="fuzz-eval",
                dataset="fuzz",
                prompts=1,
                targets=[
                    outcomes_pb2.EvaluationTarget(
                        target="sim-a",
                        model="sim-a",
                        version="1",
                        metrics=[outcomes_pb2.MetricSummary(metric="exact_match", mean=1)],
                    )
                ],
            )
        ),
        "OutcomeService.ListEvaluations": outcomes_pb2.ListEvaluationsRequest(model="sim-a"),
        "RouterService.Generate": router_pb2.GenerateRequest(
            model="sim-a", prompt=prompt, sampling=sampling
        ),
        "RouterService.Complete": router_pb2.CompleteRequest(
            model="sim-a", prompt=prompt, sampling=sampling
        ),
        "RouterService.RecordFeedback": router_pb2.RecordFeedbackRequest(
            request_id=FEEDBACK_ID, score=1.0
        ),
        "WorkerService.Generate": worker_pb2.WorkerServiceGenerateRequest(
            request_id="fuzz", model=served, prompt=prompt, sampling=sampling, load_if_cold=True
        ),
        "WorkerService.LoadModel": worker_pb2.LoadModelRequest(model=served),
        "WorkerService.UnloadModel": worker_pb2.UnloadModelRequest(name="sim-a", version="1"),
    }


def prepare(rpc: Rpc, mesh: SimMesh) -> None:
    """What the seeds point at, made before the fuzz whatever ran before: a feedback
    target, the model and route the writes change (ALREADY_EXISTS is fine)."""
    prepared = seeds(mesh)
    with grpc.insecure_channel(mesh.local.registry_address) as channel:
        for name in ("RegistryService.RegisterModel", "RegistryService.PutRoute"):
            method = next(r for r in RPCS if r.name == name)
            unary = channel.unary_unary(method.path, _serialize)
            try:
                unary(prepared[name], timeout=30, metadata=bearer_metadata(ADMIN_TOKEN))
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err
    if rpc.name == "RouterService.RecordFeedback":
        with grpc.insecure_channel(mesh.local.router_address) as channel:
            complete = channel.unary_unary("/modelyard.v1.RouterService/Complete", _serialize)
            request = router_pb2.CompleteRequest(
                model="sim-a", prompt="rate me", request_id=FEEDBACK_ID
            )
            request.sampling.max_tokens = 2
            complete(request, timeout=30, metadata=bearer_metadata(CLIENT_KEY))


def requests(rpc: Rpc, mesh: SimMesh) -> st.SearchStrategy[Message]:
    seed = seeds(mesh).get(rpc.name)
    if seed is None:
        seed = GetMessageClass(rpc.method.input_type)()
    anything = PROTOS.message(rpc.method.input_type)
    return st.one_of(PROTOS.near(seed), PROTOS.near(seed), anything)


def credentials(valid: str) -> st.SearchStrategy[str | None]:
    """Mostly the role's own credential; otherwise none, an empty or a random one."""
    random = st.text(alphabet=string.ascii_letters + string.digits + "-_.", max_size=40)
    return st.one_of(st.just(valid), st.just(valid), st.just(valid), st.none(), random)


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str


async def call(channel: grpc.aio.Channel, rpc: Rpc, request: Message, token: str | None) -> Outcome:
    metadata = bearer_metadata(token) if token is not None else None
    response_type = GetMessageClass(rpc.method.output_type)
    serializer: Any = _serialize
    try:
        if not rpc.method.server_streaming:
            unary = channel.unary_unary(rpc.path, serializer, response_type.FromString)
            await unary(request, timeout=CALL_TIMEOUT_S, metadata=metadata)
            return Outcome(grpc.StatusCode.OK, "")
        stream = channel.unary_stream(rpc.path, serializer, response_type.FromString)
        events = stream(request, timeout=CALL_TIMEOUT_S, metadata=metadata)
        try:
            await _read(events, rpc.method.name in LONG_LIVED)
        finally:
            events.cancel()
        return Outcome(grpc.StatusCode.OK, "")
    except grpc.aio.AioRpcError as err:
        return Outcome(err.code(), err.details() or "")


async def _read(events: Any, long_lived: bool) -> None:
    for _ in range(MAX_EVENTS):
        try:
            event = await asyncio.wait_for(events.read(), OPEN_WAIT_S if long_lived else None)
        except TimeoutError:
            return  # open and waiting for changes: as it should
        if event is grpc.aio.EOF or long_lived:
            return


def check(rpc: Rpc, request: Message, token: str | None, outcome: Outcome) -> None:
    sent = text_format.MessageToString(request, as_utf8=True)
    where = f"{rpc.name} with {'a valid' if token == rpc.token else 'a wrong'} credential"
    assert outcome.code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (
        f"{where}: {outcome.code} {outcome.details!r}"
    )
    assert outcome.code != grpc.StatusCode.DEADLINE_EXCEEDED, f"{where}: no answer in time"
    assert not leaks(outcome.details, sent), f"{where}: leaks {leaks(outcome.details, sent)}"
    if token not in VALID_TOKENS:
        refused = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
        assert outcome.code in refused, f"{where} got {outcome.code}"


@pytest.mark.parametrize("rpc", RPCS, ids=[r.name for r in RPCS])
def test_fuzz_rpc(rpc: Rpc, fuzz_mesh: SimMesh, runner: asyncio.Runner) -> None:
    prepare(rpc, fuzz_mesh)
    channel = runner.run(_open(rpc.address(fuzz_mesh)))
    long_lived = rpc.method.name in LONG_LIVED

    @settings(
        max_examples=EXAMPLES_LONG_LIVED if long_lived else EXAMPLES.get(rpc.name, EXAMPLES_EACH),
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(request=requests(rpc, fuzz_mesh), token=credentials(rpc.token))
    def case(request: Message, token: str | None) -> None:
        CASES[rpc.name] += 1
        outcome = runner.run(call(channel, rpc, request, token))
        CODES[outcome.code.name] += 1
        check(rpc, request, token, outcome)

    try:
        case()
    finally:
        runner.run(channel.close())
    assert not mesh_trouble(fuzz_mesh), mesh_trouble(fuzz_mesh)


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


async def _open(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address)


# One request per service just over the transport's 4 MiB (MODELYARD_*_LIMITS_MAX_MESSAGE_BYTES):
# refused by gRPC before it is parsed. (The fuzz keeps its strings smaller: a message this
# large takes seconds to generate.)
HUGE = "x" * (5 * 1024 * 1024)
OVERSIZED = [
    ("RegistryService.GetModel", registry_pb2.GetModelRequest(name=HUGE)),
    ("RouterService.Complete", router_pb2.CompleteRequest(model="sim-a", prompt=HUGE)),
    ("WorkerService.Generate", worker_pb2.WorkerServiceGenerateRequest(prompt=HUGE)),
]


@pytest.mark.parametrize(("name", "request_"), OVERSIZED, ids=[n for n, _ in OVERSIZED])
def test_an_oversized_message_is_refused_before_it_is_parsed(
    name: str, request_: Message, fuzz_mesh: SimMesh, runner: asyncio.Runner
) -> None:
    rpc = next(r for r in RPCS if r.name == name)
    channel = runner.run(_open(rpc.address(fuzz_mesh)))
    try:
        outcome = runner.run(call(channel, rpc, request_, rpc.token))
    finally:
        runner.run(channel.close())
    assert outcome.code == grpc.StatusCode.RESOURCE_EXHAUSTED, outcome
    assert not mesh_trouble(fuzz_mesh), mesh_trouble(fuzz_mesh)


def test_every_rpc_is_fuzzed() -> None:
    # The list is built from the descriptors: this fails only if a service goes missing.
    assert {r.service.name for r in RPCS} == {
        "OutcomeService",
        "RegistryService",
        "RouterService",
        "WorkerService",
    }
    assert len(RPCS) == sum(len(s.methods) for s in SERVICES) >= 21
