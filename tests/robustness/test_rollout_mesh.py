"""SLO-gated rollouts on a real mesh (issue 14): registry (SQLite, controller every 0.2 s),
the sim worker and the router of the shared fuzz mesh, traffic sent through the router.

A failing canary is rolled back within its first step window; a good canary steps 25% ->
50% -> 100% and is promoted to production, each step in the route's history with its
reason; routers follow each decision through Watch (the arms they pick change). An
operator's pause holds the rollout and an abort sends the canary back to 0%.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from modelyard.bearer import bearer_metadata
from modelyard.v1 import (
    common_pb2,
    model_pb2,
    registry_pb2,
    registry_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)
from tests.robustness.sim_mesh import ADMIN_TOKEN, CLIENT_KEY, FAST, ROUTER_READS, SimMesh
from tests.sim_models import sim_model

pytestmark = pytest.mark.integration

P = model_pb2
ADMIN = bearer_metadata(ADMIN_TOKEN)
READS = bearer_metadata(ROUTER_READS)
SMALL = {**FAST, "sim_memory_bytes": str(64 << 20)}
# The canary that fails: it needs more memory than the worker's whole budget, so every
# request routed to it fails (no worker can load it), as a broken model version would.
FAILING = {**SMALL, "sim_memory_bytes": str(64 << 30)}
PARALLEL = 6


def register(registry: registry_pb2_grpc.RegistryServiceStub, model: P.Model) -> None:
    try:
        registry.RegisterModel(
            registry_pb2.RegisterModelRequest(model=model), timeout=30, metadata=ADMIN
        )
    except grpc.RpcError as err:
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err


@pytest.fixture(scope="module")
def catalogue(fuzz_mesh: SimMesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    artifact = tmp_path_factory.mktemp("rollout") / "sim.bin"
    artifact.write_bytes(b"a simulated model for the rollout test\n")
    with grpc.insecure_channel(fuzz_mesh.local.registry_address) as channel:
        registry = registry_pb2_grpc.RegistryServiceStub(channel)
        register(registry, sim_model(artifact, "ro-base", extra=SMALL, context_length=1024))
        for name, extra in (("ro-good", SMALL), ("ro-broken", FAILING)):
            register(
                registry,
                sim_model(artifact, name, extra=extra, context_length=1024, stage=P.STAGE_STAGING),
            )
    yield fuzz_mesh.local.registry_address


def rollout_route(name: str, canary: str, **policy: object) -> P.Route:
    values: dict[str, object] = {
        "canary_arm": "canary",
        "baseline_arm": "baseline",
        "steps_percent": [25, 50, 100],
        "min_step_seconds": 1,
        "min_requests": 5,
        # TTFT p95 on this loaded 2-core machine varies a lot between samples of 20-30:
        # a wide ratio, so that only the error guard decides here.
        "max_ttft_p95_ratio": 20.0,
        "max_error_rate_increase": 0.05,
    }
    values.update(policy)
    return P.Route(
        name=name,
        arms=[
            P.RouteArm(name="baseline", model="ro-base@1", weight=1),
            P.RouteArm(name="canary", model=f"{canary}@1", weight=1),
        ],
        rollout=P.RolloutPolicy(**values),  # type: ignore[arg-type]
    )


class Mesh:
    def __init__(self, mesh: SimMesh) -> None:
        self.registry_channel = grpc.insecure_channel(mesh.local.registry_address)
        self.router_channel = grpc.insecure_channel(mesh.local.router_address)
        self.registry = registry_pb2_grpc.RegistryServiceStub(self.registry_channel)
        self.router = router_pb2_grpc.RouterServiceStub(self.router_channel)
        self.pool = ThreadPoolExecutor(PARALLEL)

    def close(self) -> None:
        self.pool.shutdown()
        self.registry_channel.close()
        self.router_channel.close()

    def put(self, route: P.Route) -> P.Route:
        reply: registry_pb2.PutRouteResponse = self.registry.PutRoute(
            registry_pb2.PutRouteRequest(route=route), timeout=30, metadata=ADMIN
        )
        # The router learns the new route through Watch: poll until it serves it.
        deadline = time.monotonic() + 30
        while True:
            try:
                self.arm_of_one(route.name)  # served, or failed on a broken canary
                return reply.route
            except grpc.RpcError:  # NOT_FOUND: not known yet
                if time.monotonic() > deadline:
                    raise

    def route(self, name: str) -> P.Route:
        reply: registry_pb2.GetRouteResponse = self.registry.GetRoute(
            registry_pb2.GetRouteRequest(name=name), timeout=10, metadata=READS
        )
        return reply.route

    def control(self, name: str, action: registry_pb2.RolloutControl.ValueType) -> P.Route:
        request = registry_pb2.ControlRolloutRequest(route=name, action=action, reason="test")
        reply: registry_pb2.ControlRolloutResponse = self.registry.ControlRollout(
            request, timeout=30, metadata=ADMIN
        )
        return reply.route

    def arm_of_one(self, route: str) -> str:
        """The arm that served one request, or "failed"."""
        request = router_pb2.GenerateRequest(
            model=route, prompt="hi", sampling=common_pb2.SamplingParams(max_tokens=2)
        )
        arm = ""
        try:
            for event in self.router.Generate(
                request, timeout=30, metadata=bearer_metadata(CLIENT_KEY)
            ):
                if event.HasField("started"):
                    arm = event.started.arm
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise
            return "failed"
        return arm

    def send(self, route: str, n: int) -> Counter[str]:
        """n requests through the router, PARALLEL at a time; the arms that served them."""
        return Counter(self.pool.map(lambda _: self.arm_of_one(route), range(n)))


@pytest.fixture
def mesh(fuzz_mesh: SimMesh, catalogue: str) -> Iterator[Mesh]:
    opened = Mesh(fuzz_mesh)
    try:
        yield opened
    finally:
        opened.close()


def drive(mesh: Mesh, route: str, done: Callable[[P.Route], bool], timeout_s: float) -> P.Route:
    """Send traffic in small batches until the route's stored state satisfies `done`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        current = mesh.route(route)
        if done(current):
            return current
        mesh.send(route, 20)
    raise AssertionError(
        f"route {route} did not get there in {timeout_s:.0f} s: {mesh.route(route)}"
    )


def actions(route: P.Route) -> list[str]:
    return [
        P.RolloutAction.Name(d.action).removeprefix("ROLLOUT_ACTION_")
        for d in route.rollout_status.history
    ]


def only_arm(mesh: Mesh, route: str, arm: str) -> None:
    """The router picks only `arm` now: it followed the decision through Watch."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if set(mesh.send(route, 20)) == {arm}:
            return
    raise AssertionError(f"the router still sends {route} traffic to other arms than {arm}")


def test_a_failing_canary_is_rolled_back_in_its_first_step_and_a_paused_one_holds(
    mesh: Mesh,
) -> None:
    mesh.put(rollout_route("ro-ctl", "ro-broken"))
    paused = mesh.control("ro-ctl", registry_pb2.ROLLOUT_CONTROL_PAUSE)
    assert paused.rollout_status.state == P.ROLLOUT_STATE_PAUSED
    started = mesh.put(rollout_route("ro-bad", "ro-broken"))
    assert started.rollout_status.state == P.ROLLOUT_STATE_PROGRESSING
    assert {a.name: a.weight for a in started.arms} == {"baseline": 75.0, "canary": 25.0}

    # The paused route gets the same traffic: once the controller has rolled ro-bad back,
    # it has judged windows like the paused one's, and left that one alone.
    def judged(route: P.Route) -> bool:
        mesh.send("ro-ctl", 20)
        return route.rollout_status.state != P.ROLLOUT_STATE_PROGRESSING

    route = drive(mesh, "ro-bad", judged, 90)
    assert route.rollout_status.state == P.ROLLOUT_STATE_ROLLED_BACK
    assert actions(route) == ["START", "ROLLBACK"]
    rollback = route.rollout_status.history[-1]
    assert rollback.from_step == 0 and rollback.canary_percent == 0
    assert "error rate 100.0%" in rollback.reason and rollback.actor == "controller"
    assert {a.name: a.weight for a in route.arms} == {"baseline": 100.0, "canary": 0.0}
    only_arm(mesh, "ro-bad", "baseline")

    held = mesh.route("ro-ctl")
    assert held.rollout_status.state == P.ROLLOUT_STATE_PAUSED
    assert actions(held) == ["START", "PAUSE"]
    assert held.rollout_status.history[-1].actor not in ("", "controller")  # the caller
    aborted = mesh.control("ro-ctl", registry_pb2.ROLLOUT_CONTROL_ABORT)
    assert aborted.rollout_status.state == P.ROLLOUT_STATE_ABORTED
    assert actions(aborted) == ["START", "PAUSE", "ABORT"]
    assert {a.name: a.weight for a in aborted.arms} == {"baseline": 100.0, "canary": 0.0}
    with pytest.raises(grpc.RpcError) as twice:
        mesh.control("ro-ctl", registry_pb2.ROLLOUT_CONTROL_ABORT)
    assert twice.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    only_arm(mesh, "ro-ctl", "baseline")


def test_a_good_canary_steps_up_and_is_promoted(mesh: Mesh) -> None:
    mesh.put(rollout_route("ro-good-route", "ro-good", promote_on_success=True))
    route = drive(
        mesh,
        "ro-good-route",
        lambda r: r.rollout_status.state != P.ROLLOUT_STATE_PROGRESSING,
        120,
    )
    assert route.rollout_status.state == P.ROLLOUT_STATE_SUCCEEDED, route.rollout_status
    assert actions(route) == ["START", "ADVANCE", "PROMOTE"]
    history = route.rollout_status.history
    assert [d.canary_percent for d in history] == [25, 50, 100]
    for decision in history[1:]:
        assert "passed" in decision.reason and "ttft p95" in decision.reason, decision.reason
    model = mesh.registry.GetModel(
        registry_pb2.GetModelRequest(name="ro-good", version="1"), timeout=10, metadata=READS
    ).model
    assert model.stage == P.STAGE_PRODUCTION
    only_arm(mesh, "ro-good-route", "canary")
